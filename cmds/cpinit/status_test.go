package main

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/pkg/bootstate"
	"github.com/cpinit/cpinit/pkg/dmsnap"
)

// schemaV1 freezes schema 1 of `cpinit status --json`: these fields, with
// these JSON types, must stay. New fields may be added (to Status and to
// docs/status.schema.json); removing or retyping one of these means a new
// schema version, a new frozen list and a note in docs/cli.md.
var schemaV1 = map[string]string{
	"schema": "integer", "state": "string", "phase": "string", "reason": "string",
	"counter": "string", "target_slot": "string", "booted_slot": "string",
	"tries_left": "integer", "attempts": "integer", "cow_path": "string",
	"cow_bytes": "integer", "chunk_bytes": "integer", "snapshot": "object",
	"merge": "object", "rollback_possible": "boolean", "store": "array", "note": "string",
	"usage.state": "string", "usage.used_bytes": "integer", "usage.total_bytes": "integer",
	"usage.metadata_bytes": "integer", "usage.used_percent": "number",
	"rollback": "object", "rollback.method": "string", "rollback.state": "string",
	"rollback.device": "string", "rollback.by": "string", "rollback.pid": "integer",
	"rollback.bytes_done": "integer", "rollback.bytes_total": "integer", "rollback.percent": "number",
	"rollback.rate_bytes_per_sec": "number", "rollback.seconds_left": "number", "rollback.started": "string",
	"rollback.updated": "string", "rollback.seconds": "number", "rollback.error": "string",
}

type schemaNode struct {
	Type       string                 `json:"type"`
	Const      any                    `json:"const"`
	Enum       []string               `json:"enum"`
	Ref        string                 `json:"$ref"`
	Properties map[string]*schemaNode `json:"properties"`
	Required   []string               `json:"required"`
	Items      *schemaNode            `json:"items"`
	Minimum    *float64               `json:"minimum"`
	Maximum    *float64               `json:"maximum"`
	Defs       map[string]*schemaNode `json:"$defs"`
}

func loadStatusSchema(t *testing.T) *schemaNode {
	t.Helper()
	b, err := os.ReadFile("../../docs/status.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var s schemaNode
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("docs/status.schema.json does not parse: %v", err)
	}
	return &s
}

func (s *schemaNode) resolve(root *schemaNode) *schemaNode {
	if name, ok := strings.CutPrefix(s.Ref, "#/$defs/"); ok {
		return root.Defs[name]
	}
	return s
}

// jsonType is the JSON Schema type encoding/json gives a Go type.
func jsonType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Pointer:
		return jsonType(t.Elem())
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint64, reflect.Uint32, reflect.Uint8:
		return "integer"
	case reflect.Float64:
		return "number"
	case reflect.Slice:
		return "array"
	case reflect.Struct:
		return "object"
	}
	return "unsupported " + t.String()
}

// checkStruct compares a Go struct with its schema object: the same
// properties, the same types, required = the fields without omitempty.
func checkStruct(t *testing.T, root, obj *schemaNode, typ reflect.Type, prefix string, seen map[string]string) {
	t.Helper()
	var fields, required []string
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		fields = append(fields, name)
		if !strings.Contains(opts, "omitempty") {
			required = append(required, name)
		}
		p := obj.Properties[name]
		if p == nil {
			t.Errorf("docs/status.schema.json lacks %s%s (a field of %s)", prefix, name, typ)
			continue
		}
		def := strings.TrimPrefix(p.Ref, "#/$defs/")
		p = p.resolve(root)
		want := jsonType(f.Type)
		if p.Type != want {
			t.Errorf("%s%s: schema type %q, Go %s encodes as %q", prefix, name, p.Type, f.Type, want)
		}
		seen[prefix+name] = want
		if want == "object" {
			checkStruct(t, root, p, f.Type.Elem(), def+".", seen)
		}
	}
	for name := range obj.Properties {
		if !slices.Contains(fields, name) {
			t.Errorf("docs/status.schema.json documents %s%s, which %s does not have", prefix, name, typ)
		}
	}
	slices.Sort(required)
	got := slices.Clone(obj.Required)
	slices.Sort(got)
	if !slices.Equal(got, required) {
		t.Errorf("%s required: schema %v, Go (fields without omitempty) %v", typ, got, required)
	}
}

// TestStatusSchemaDoc keeps docs/status.schema.json, the Status type and
// schema 1 in step.
func TestStatusSchemaDoc(t *testing.T) {
	root := loadStatusSchema(t)
	if v, ok := root.Properties["schema"].Const.(float64); !ok || int(v) != StatusSchema {
		t.Errorf("schema.const = %v, StatusSchema = %d", root.Properties["schema"].Const, StatusSchema)
	}
	seen := map[string]string{}
	checkStruct(t, root, root, reflect.TypeOf(Status{}), "", seen)
	if StatusSchema == 1 {
		for name, typ := range schemaV1 {
			if seen[name] != typ {
				t.Errorf("schema 1 field %s (%s) is gone or retyped (%q): that needs a new schema version", name, typ, seen[name])
			}
		}
	}

	// The enums list every value the code can print.
	enum := func(node *schemaNode) []string { return node.resolve(root).Enum }
	var states []string
	for s := bootstate.StateFresh; s <= bootstate.StateRollbackPending; s++ {
		states = append(states, s.String())
	}
	states = append(states, "unreadable")
	var reasons []string
	for r := bootstate.ReasonCommit; r.String() != fmt.Sprintf("reason(%d)", uint8(r)); r++ {
		reasons = append(reasons, r.String())
	}
	var snapStates []string
	for _, s := range []dmsnap.SnapState{dmsnap.SnapActive, dmsnap.SnapInvalid, dmsnap.SnapOverflow, dmsnap.SnapMergeFailed, dmsnap.SnapUnknown} {
		snapStates = append(snapStates, snapStateName(s))
	}
	for _, c := range []struct {
		name string
		node *schemaNode
		want []string
	}{
		{"state", root.Properties["state"], states},
		{"reason", root.Properties["reason"], reasons},
		{"counter", root.Properties["counter"], []string{bootstate.CounterAndroid.String(), bootstate.CounterNative.String(), bootstate.CounterBootloader.String()}},
		{"bootloader", root.Properties["bootloader"], []string{bootloaderMisc, bootloaderNotTold, bootloaderMiscMissing, bootloaderTold, bootloaderMissing}},
		{"snapshot.state", root.Properties["snapshot"].resolve(root).Properties["state"], snapStates},
		{"rollback.method", root.Properties["rollback"].resolve(root).Properties["method"], []string{mergeRestore, mergeKernel}},
		{"rollback.state", root.Properties["rollback"].resolve(root).Properties["state"], []string{rollbackRunning, rollbackDone, rollbackFailed, rollbackStopped}},
		{"rollback.by", root.Properties["rollback"].resolve(root).Properties["by"], []string{rollbackByBoot, rollbackByMerge}},
	} {
		if !slices.Equal(enum(c.node), c.want) {
			t.Errorf("%s enum: schema %q, code %q", c.name, enum(c.node), c.want)
		}
	}
}

// validate checks a decoded JSON value against the subset of JSON Schema the
// document uses (type, const, enum, required, properties, items, $ref,
// minimum, maximum), and rejects properties the schema does not know.
func validate(root, s *schemaNode, v any, at string) error {
	s = s.resolve(root)
	switch s.Type {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want an object, have %T", at, v)
		}
		for _, r := range s.Required {
			if _, ok := m[r]; !ok {
				return fmt.Errorf("%s: required %q missing", at, r)
			}
		}
		for k, e := range m {
			p := s.Properties[k]
			if p == nil {
				return fmt.Errorf("%s: %q is not in the schema", at, k)
			}
			if err := validate(root, p, e, at+"."+k); err != nil {
				return err
			}
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s: want an array, have %T", at, v)
		}
		for i, e := range a {
			if err := validate(root, s.Items, e, fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s: want a string, have %T", at, v)
		}
		if len(s.Enum) > 0 && !slices.Contains(s.Enum, str) {
			return fmt.Errorf("%s: %q not one of %q", at, str, s.Enum)
		}
	case "integer", "number":
		n, ok := v.(float64)
		if !ok || (s.Type == "integer" && n != float64(int64(n))) {
			return fmt.Errorf("%s: want an %s, have %v", at, s.Type, v)
		}
		if s.Minimum != nil && n < *s.Minimum || s.Maximum != nil && n > *s.Maximum {
			return fmt.Errorf("%s: %v out of range", at, n)
		}
		if s.Const != nil && n != s.Const.(float64) {
			return fmt.Errorf("%s: %v, want %v", at, n, s.Const)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%s: want a boolean, have %T", at, v)
		}
	default:
		return fmt.Errorf("%s: schema type %q not handled by this test", at, s.Type)
	}
	return nil
}

// TestStatusJSONValidates encodes statuses the way cmdStatus does and
// validates them against the documented schema.
func TestStatusJSONValidates(t *testing.T) {
	root := loadStatusSchema(t)
	for _, st := range []*Status{
		{Schema: StatusSchema, State: "fresh", BootedSlot: "_a", RollbackPossible: false},
		{
			Schema: StatusSchema, State: "checkpointing", Phase: "active", Counter: "android",
			TargetSlot: "_b", BootedSlot: "_b", Attempts: 1, COWPath: DefaultCOWPath,
			COWBytes: 64 << 20, ChunkBytes: 4096, RollbackPossible: true,
			Snapshot: snapshotUsage(&dmsnap.SnapshotStatus{State: dmsnap.SnapActive, Allocated: 2048, Total: 131072, Metadata: 16}),
			Fill:     &FillRate{RateBytesPerSec: 1 << 20, SecondsToFull: new(float64), WindowSeconds: 10, Source: "watch"},
		},
		{
			Schema: StatusSchema, State: "checkpointing", Phase: "active", Counter: "android", Attempts: 2,
			Snapshot: snapshotUsage(&dmsnap.SnapshotStatus{State: dmsnap.SnapActive, Allocated: 2048, Total: 131072, Metadata: 16}),
			Fill:     &FillRate{WindowSeconds: 1, Source: "sampled"},
		},
		{
			Schema: StatusSchema, State: "checkpointing", Phase: "active", Counter: "native", Bootloader: bootloaderNotTold, TriesLeft: new(0),
			TargetSlot: "_b", BootedSlot: "_b", Attempts: 1, COWPath: DefaultCOWPath,
			Snapshot: snapshotUsage(&dmsnap.SnapshotStatus{State: dmsnap.SnapInvalid}),
			Note:     "the COW overflowed",
		},
		{Schema: StatusSchema, State: "unreadable", Store: []string{"A: crc mismatch", "B: empty"}, Note: "recovery"},
		{Schema: StatusSchema, State: "committed", Reason: "overflow", Counter: "android"},
		{
			Schema: StatusSchema, State: "rollback-pending", Counter: "android", Attempts: 1, RollbackPossible: true,
			Rollback: &RollbackProgress{Method: mergeRestore, State: rollbackRunning, Device: "/dev/vdc", By: rollbackByMerge, PID: 412,
				BytesDone: 1 << 20, BytesTotal: 4 << 20, Percent: 25, RateBytesPerSec: 1 << 20, SecondsLeft: new(float64),
				Started: "2025-01-02T03:04:05Z", Updated: "2025-01-02T03:04:06Z", Seconds: 1},
		},
		{
			Schema: StatusSchema, State: "fresh", Reason: "merged",
			Rollback: &RollbackProgress{Method: mergeKernel, State: rollbackFailed, Device: "/dev/vdc", By: rollbackByBoot, PID: 1,
				Started: "2025-01-02T03:04:05Z", Updated: "2025-01-02T03:04:06Z", Error: "merge failed"},
		},
	} {
		b, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		if err := validate(root, root, v, "status"); err != nil {
			t.Errorf("%s: %v", b, err)
		}
	}
	// And the validator does reject what it should.
	for _, bad := range []string{
		`{"schema":1,"state":"fresh","attempts":0}`,
		`{"schema":2,"state":"fresh","attempts":0,"rollback_possible":false}`,
		`{"schema":1,"state":"sleeping","attempts":0,"rollback_possible":false}`,
		`{"schema":1,"state":"fresh","attempts":0,"rollback_possible":false,"extra":1}`,
		`{"schema":1,"state":"fresh","attempts":0,"rollback_possible":false,"snapshot":{"state":"Invalid","used_bytes":0,"total_bytes":0,"metadata_bytes":0,"used_percent":0}}`,
	} {
		var v any
		json.Unmarshal([]byte(bad), &v)
		if err := validate(root, root, v, "status"); err == nil {
			t.Errorf("%s validated", bad)
		}
	}
}
