package fiemap_test

import (
	"encoding/json"
	"fmt"
	"log"
	"os"

	"github.com/cpinit/cpinit/pkg/fiemap"
)

// What `cpinit extents [--json] FILE` does: the dm table in dmsetup's
// format, or the whole map (extents with flags, segments, fingerprint) as
// JSON. (Not run: it needs a file on ext4 or f2fs.)
func ExampleMapFile() {
	asJSON := len(os.Args) > 1 && os.Args[1] == "--json"
	m, err := fiemap.MapFile("/data/.cpinit/cow")
	if err != nil {
		log.Fatal(err) // names the file, the offset and the flag or reason
	}
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(m); err != nil {
			log.Fatal(err)
		}
		return
	}
	fmt.Print(m.DMTable())
}

// The COW store's life: allocate and record before the checkpoint, verify
// before building the dm table or merging, release after commit or merge.
// (Not run: it needs root and an ext4 or f2fs mount.)
func ExampleAllocate() {
	m, err := fiemap.Allocate("/data/.cpinit/cow", 1<<30, fiemap.AllocOptions{Reserve: 256 << 20})
	if err != nil {
		log.Fatal(err)
	}
	record, _ := json.Marshal(m) // into the metadata store, outside userdata

	// Later (next boot, recovery): decode, check, verify against the file.
	var want fiemap.Map
	if err := json.Unmarshal(record, &want); err != nil {
		log.Fatal(err)
	}
	if _, err := fiemap.Verify("/data/.cpinit/cow", &want); err != nil {
		log.Fatal(err) // errors.Is(err, fiemap.ErrMapChanged): never map it
	}
	fmt.Print(want.DMTable())

	// After commit, or once a merge completed and nothing maps the file:
	if err := fiemap.Release("/data/.cpinit/cow"); err != nil {
		log.Fatal(err)
	}
}
