package qemutests

// Bad inputs (issue 6): each case is set up on the host images between
// boots, booted, and checked for a console message that names the problem
// and what to do, a safe outcome (no merge of a suspect COW, the COW file
// kept while a rollback may still be needed, userdata never mounted raw
// while a checkpoint exists: its image is byte-for-byte unchanged by a boot
// that stops), nothing lost (manifest and e2fsck on the host) and the
// metadata record the policy in pkg/bootstate/doc.go prescribes.

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/pkg/bootstate"
	"github.com/u-root/u-root/pkg/cpio"
)

// imageHash is the sha256 of a disk image, to prove a boot wrote nothing.
func imageHash(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// untouched records the userdata and metadata images, and check fails the
// test if a boot changed either.
type untouched struct{ userdata, metadata string }

func snapshotImages(t *testing.T, d *ABDevice) untouched {
	t.Helper()
	return untouched{imageHash(t, d.Userdata), imageHash(t, d.Metadata)}
}

func (u untouched) check(t *testing.T, d *ABDevice, what string) {
	t.Helper()
	if h := imageHash(t, d.Userdata); h != u.userdata {
		t.Errorf("%s: the userdata image changed (it must not be mapped or mounted)", what)
	}
	if h := imageHash(t, d.Metadata); h != u.metadata {
		t.Errorf("%s: the metadata store changed (the evidence must be kept)", what)
	}
}

// corruptStore writes junk over both copies of the store's record, after
// the magic: with no magic left anywhere the store would hold no sign of
// cpinit, which cpinit refuses as foreign data (bootstate.ErrStoreForeign)
// rather than treat as a damaged store it may overwrite.
func corruptStore(t *testing.T, d *ABDevice) {
	t.Helper()
	f, err := os.OpenFile(d.Metadata, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	junk := make([]byte, 4096)
	rand.Read(junk)
	for _, off := range []int64{0, bootstate.CopyStride} {
		if _, err := f.WriteAt(junk, off+int64(len("CPINITMD"))); err != nil {
			t.Fatal(err)
		}
	}
}

// rewriteRecord changes the stored record on the host, as a buggy or
// foreign writer would (a valid record, saved normally).
func rewriteRecord(t *testing.T, d *ABDevice, fn func(*bootstate.Record)) {
	t.Helper()
	s, f, err := bootstate.OpenStore(d.Metadata)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, _, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	fn(r)
	if _, err := s.Save(r); err != nil {
		t.Fatal(err)
	}
}

// debugfsW runs a debugfs request that writes the userdata image (an
// offline tool acting behind cpinit's back).
func debugfsW(t *testing.T, d *ABDevice, req string) {
	t.Helper()
	out, err := exec.Command("debugfs", "-w", "-R", req, d.Userdata).CombinedOutput()
	if err != nil || bytes.Contains(out, []byte("debugfs: ")) && bytes.Contains(out, []byte("rror")) {
		t.Fatalf("debugfs -w -R %q: %v\n%s", req, err, out)
	}
}

// stopped waits for a boot that stops for recovery (reboot, as the harness
// sets cpinit.on_fatal=reboot) and checks the lines every such stop prints.
func stopped(t *testing.T, vm *VM, problem string) {
	t.Helper()
	vm.ExpectT(t, `cpinit: FATAL: `, SlotBootTimeout)
	m := vm.ExpectT(t, problem, SlotBootTimeout)
	t.Logf("console: %s", m[0])
	vm.ExpectT(t, `userdata was left untouched \(not mapped, not mounted, COW file kept\)`, SlotBootTimeout)
	vm.ExpectT(t, regexp.QuoteMeta("to recover: boot recovery mode (cpinit.recovery=1), inspect with `cpinit status`, then fix the cause or run `cpinit recover keep-current --yes`"), SlotBootTimeout)
	vm.ExpectT(t, `recovery mode: boot with cpinit.recovery=1`, SlotBootTimeout)
	vm.ExpectT(t, `stopping the machine \(reboot`, SlotBootTimeout)
	vm.Wait(SlotBootTimeout)
	if strings.Contains(vm.Output(), "mounted=") {
		t.Fatal("a boot that stopped for recovery reported userdata mounted")
	}
}

func bothSlots(d *ABDevice, params string) { d.Slot[0], d.Slot[1] = params, params }

// TestBadInputCorruptStore: both copies of the metadata store are junk while
// an update's checkpoint is active. The boot stops (no merge, no deletion,
// nothing mounted, the junk kept as evidence); in recovery mode `cpinit
// status` shows both copies, `cpinit recover keep-current` explains and
// refuses without --yes, then writes committed(operator); the next boot
// keeps the update's data and deletes the COW file.
func TestBadInputCorruptStore(t *testing.T) {
	t.Parallel()
	d := NewTestDevice(t, 11)
	OTABegin(t, d, "32M")
	vm := TrialBoot(t, d, "sysinit.action=workload sysinit.seed=11 sysinit.mib=4 sysinit.then=crash")
	vm.ExpectT(t, `sysinit: crashing`, SlotBootTimeout)
	vm.Wait(SlotBootTimeout)

	corruptStore(t, d)
	u := snapshotImages(t, d)
	vm, _ = d.Boot(t, "")
	stopped(t, vm, `metadata store unreadable \(.*metadata store has no valid copy \(copy A: invalid: .*copy B: invalid: .*\); refusing to merge or delete anything`)
	u.check(t, d, "boot with a corrupt store")
	if _, err := d.Record(); !errors.Is(err, bootstate.ErrStoreCorrupt) {
		t.Fatalf("store after the stopped boot: %v, want ErrStoreCorrupt", err)
	}

	bothSlots(d, "sysinit.action=cmd sysinit.args=status+recover,keep-current+recover,keep-current,--yes")
	vm, _ = d.Boot(t, "cpinit.recovery=1")
	vm.ExpectT(t, `cpinit: recovery mode \(cpinit.recovery=1\): userdata is neither mapped nor mounted`, SlotBootTimeout)
	vm.ExpectT(t, `state: +unreadable`, SlotBootTimeout)
	vm.ExpectT(t, `store copy A: invalid: `, SlotBootTimeout)
	vm.ExpectT(t, `store copy B: invalid: `, SlotBootTimeout)
	vm.ExpectT(t, "note: +metadata store /dev/vdd: .*no valid copy; boot stops for recovery until an operator runs `cpinit recover keep-current --yes`", SlotBootTimeout)
	vm.ExpectT(t, `the metadata store is unreadable .*cannot tell which state the checkpoint was in.*e2fsck`, SlotBootTimeout)
	vm.ExpectT(t, `refusing to write the metadata store /dev/vdd without --yes`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: cmd exit=exit status 1`, SlotBootTimeout)
	vm.ExpectT(t, `kept the current data: metadata store /dev/vdd now says committed \(operator\)`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: cmd exit=<nil>`, SlotBootTimeout)
	vm.ExpectT(t, `state: +committed, reason operator`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	if imageHash(t, d.Userdata) != u.userdata {
		t.Fatal("recovery mode changed userdata")
	}
	if r := WantRecord(t, d, bootstate.StateCommitted); r.Reason != bootstate.ReasonOperator || r.COWPath != "/.cpinit/cow" {
		t.Fatalf("after keep-current: reason %v, COW %q", r.Reason, r.COWPath)
	}

	bothSlots(d, "sysinit.action=report")
	vm, _ = d.Boot(t, "")
	vm.ExpectT(t, `cpinit: checkpoint operator: deleting /.cpinit/cow`, SlotBootTimeout)
	vm.ExpectT(t, `cpinit: state=fresh .* action=finish-commit-cleanup`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: hello.txt="written by the update"`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	WantRecord(t, d, bootstate.StateFresh)
	m := UserdataManifestT(t, d) // e2fsck -fn clean
	if _, ok := m["new/file000"]; !ok {
		t.Fatal("the update's data is gone after keep-current")
	}
	if exists, err := d.COWFileExists(); err != nil || exists {
		t.Fatalf("COW file still in userdata after keep-current (err %v)", err)
	}
}

// TestBadInputOneStoreCopyCorrupt: junk over copy A only. The store keeps
// working from copy B (policy: Degraded), the console says so, the trial
// goes on, and the boot's own writes repair copy A.
func TestBadInputOneStoreCopyCorrupt(t *testing.T) {
	t.Parallel()
	d := NewTestDevice(t, 22)
	OTABegin(t, d, "32M")
	f, err := os.OpenFile(d.Metadata, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, 512)
	rand.Read(junk)
	_, err = f.WriteAt(junk, 0)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	vm := TrialBoot(t, d, "sysinit.action=report")
	// (TrialBoot matched the create-snapshot line, which follows the
	// warning; check the whole console.)
	if !strings.Contains(vm.Output(), "cpinit: warning: metadata store /dev/vdd: only one good copy (copy A: invalid: ") {
		t.Fatalf("no warning about the bad copy:\n%s", Tail(vm.Output(), 30))
	}
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	s, sf, err := bootstate.OpenStore(d.Metadata)
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Close()
	r, info, err := s.Load()
	if err != nil || info.Degraded || !r.Active {
		t.Fatalf("store after the boot: %+v, err %v, active %v", info, err, r != nil && r.Active)
	}
}

// TestBadInputRecordNamesOtherDevice: a valid record whose extent map names
// another device (a store from another device, or a writer's bug). Applying
// the map to userdata would write over unrelated blocks: the boot stops.
func TestBadInputRecordNamesOtherDevice(t *testing.T) {
	t.Parallel()
	d := NewTestDevice(t, 12)
	before := UserdataManifestT(t, d)
	OTABegin(t, d, "32M")
	rewriteRecord(t, d, func(r *bootstate.Record) {
		r.Map.DevMinor += 16
		r.Fingerprint = r.Map.Fingerprint()
	})
	u := snapshotImages(t, d)
	d.Slot[1] = "sysinit.action=report"
	vm, _ := d.Boot(t, "")
	stopped(t, vm, `userdata device is 254:\d+ \(\d+ sectors\) but the checkpoint was taken on 254:\d+ \(\d+ sectors\)`)
	u.check(t, d, "boot with a record naming another device")
	if exists, err := d.COWFileExists(); err != nil || !exists {
		t.Fatalf("COW file gone (err %v)", err)
	}
	if diff := UserdataManifestT(t, d).Diff(before, 5); len(diff) > 0 {
		t.Fatalf("userdata changed:\n%s", strings.Join(diff, "\n"))
	}
}

// cowDamage are changes an offline tool (here debugfs on the unmounted
// image) can make to the immutable COW file behind cpinit's back.
var cowDamage = []struct{ name, debugfs string }{
	{"truncated", "set_inode_field /.cpinit/cow size 4096"},
	// The first extent's physical start (ee_start_lo, i_block[5]): the file
	// now claims other blocks.
	{"moved", "set_inode_field /.cpinit/cow block[5] 50000"},
	// Unlinked, its blocks freed for other files.
	{"deleted", "rm /.cpinit/cow"},
}

// changedCOWStopped checks a boot that found the COW file changed: a
// message that says so and what to do, nothing mounted, nothing merged.
func changedCOWStopped(t *testing.T, vm *VM, refusal string) {
	t.Helper()
	m := vm.ExpectT(t, `cpinit: FATAL: .*`+refusal, SlotBootTimeout)
	t.Logf("console: %s", m[0])
	vm.ExpectT(t, `(userdata was left untouched|userdata was not mounted and the checkpoint is kept)`, SlotBootTimeout)
	vm.ExpectT(t, "cpinit recover keep-current", SlotBootTimeout)
	vm.ExpectT(t, `stopping the machine \(reboot`, SlotBootTimeout)
	vm.Wait(SlotBootTimeout)
	if strings.Contains(vm.Output(), "mounted=") || strings.Contains(vm.Output(), "cpinit: merge") {
		t.Fatal("userdata mounted or merged with a changed COW file")
	}
}

// TestBadInputCOWChangedBeforeRollback: the checkpoint is active, then the
// COW file is changed behind cpinit's back and a rollback is requested. The
// rollback is recorded (the point of no return) but the merge is refused:
// the verification through the read-only snapshot view sees the change.
func TestBadInputCOWChangedBeforeRollback(t *testing.T) {
	t.Parallel()
	for _, c := range cowDamage {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			d := NewTestDevice(t, 13)
			OTABegin(t, d, "32M")
			// noatime: the trial writes no inode, so the COW file's inode
			// block is not copied into the COW and the snapshot view shows
			// the change (a copied block would show the original inode,
			// which is what the merge restores: then merging is right).
			vm := TrialBoot(t, d, "sysinit.action=report", "cpinit.mountopts=noatime")
			if err := vm.Wait(SlotBootTimeout); err != nil {
				t.Fatal(err)
			}
			debugfsW(t, d, c.debugfs)
			d.Slot[1] = "sysinit.action=report"
			vm, _ = d.Boot(t, "cpinit.abort=1")
			vm.ExpectT(t, `cpinit: rolling back userdata \(abort`, SlotBootTimeout)
			// Different extents in the snapshot view make Decide compare
			// fingerprints and stop; a map that cannot be taken there at
			// all fails the verification; if the snapshot view shows the
			// original inode (its block was copied into the COW during the
			// trial), the check of the current filesystem sees the change.
			// Each refuses the merge.
			changedCOWStopped(t, vm, `((the extents of /.cpinit/cow no longer match the recorded map|COW file /.cpinit/cow no longer matches the recorded map \(.*\)); merging would write to the wrong blocks|COW file /.cpinit/cow on /dev/vdc changed since .cpinit begin.: .*merging would write garbage into userdata)`)
			// The COW is verified before the rollback is recorded (and
			// before the bootloader is switched): nothing moved.
			WantRecord(t, d, bootstate.StateCheckpointing)
			if bc, err := d.ReadMisc(); err != nil || bc.Slots[1].Priority != 15 {
				t.Fatalf("misc changed by a refused rollback: %+v (%v)", bc, err)
			}
		})
	}
}

// TestBadInputCOWChangedDuringTrial: the COW file is changed between two
// trial boots. The next boot reattaches the snapshot but checks the file
// through a read-only view of the current filesystem before anything is
// mounted, and refuses to continue the trial: its writes could land in
// blocks the file no longer owns. Nothing is written.
func TestBadInputCOWChangedDuringTrial(t *testing.T) {
	t.Parallel()
	for _, c := range cowDamage {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			d := NewTestDevice(t, 21)
			OTABegin(t, d, "32M")
			vm := TrialBoot(t, d, "sysinit.action=report")
			if err := vm.Wait(SlotBootTimeout); err != nil {
				t.Fatal(err)
			}
			debugfsW(t, d, c.debugfs)
			ud := imageHash(t, d.Userdata)
			vm, _ = d.Boot(t, "")
			vm.ExpectT(t, `cpinit: trial boot 2 of slot "_b": reattaching the checkpoint`, SlotBootTimeout)
			changedCOWStopped(t, vm, `COW file /.cpinit/cow on /dev/vdc changed since .cpinit begin.: .*refusing to continue the trial on this checkpoint`)
			if imageHash(t, d.Userdata) != ud {
				t.Fatal("the refused trial boot wrote to userdata")
			}
			if r := WantRecord(t, d, bootstate.StateCheckpointing); !r.Active {
				t.Fatal("checkpoint no longer active")
			}
		})
	}
}

// TestBadInputCOWDeletedBeforeTrial: the COW file is deleted behind
// cpinit's back (an offline tool on the unmounted image) after begin and
// before the update's first boot; its blocks are free for other files now.
// The first snapshot would zero and fill them: cpinit checks the file first
// through a read-only dm view, refuses and mounts nothing. When the
// bootloader gives up on the update, the unused checkpoint is dropped and
// the data is intact.
func TestBadInputCOWDeletedBeforeTrial(t *testing.T) {
	t.Parallel()
	d := NewTestDevice(t, 19)
	before := UserdataManifestT(t, d)
	OTABegin(t, d, "32M")
	debugfsW(t, d, "rm /.cpinit/cow")
	u := snapshotImages(t, d)
	d.Slot[1] = "sysinit.action=report"
	vm, slot := d.Boot(t, "")
	if slot != 1 {
		t.Fatalf("slot %d, want the update's slot 1", slot)
	}
	vm.ExpectT(t, `cpinit: FATAL: .*COW file /.cpinit/cow on /dev/vdc changed since .cpinit begin.: .*refusing to create the snapshot, which would write to blocks the file may no longer own`, SlotBootTimeout)
	vm.ExpectT(t, `userdata was not mounted and the checkpoint is kept: fix the cause above and reboot`, SlotBootTimeout)
	vm.ExpectT(t, "boot with cpinit.recovery=1 and run `cpinit recover keep-current`", SlotBootTimeout)
	vm.Wait(SlotBootTimeout)
	if imageHash(t, d.Userdata) != u.userdata {
		t.Fatal("the refused boot wrote to userdata")
	}
	if r := WantRecord(t, d, bootstate.StateCheckpointing); r.Active {
		t.Fatal("checkpoint marked active without a snapshot")
	}
	// The update is abandoned (cpinit.abort=1 here; the bootloader's
	// fallback ends the same way): nothing to merge, the data is intact.
	d.Slot[1] = "sysinit.action=report"
	vm, _ = d.Boot(t, "cpinit.abort=1")
	// On the update's own slot: the bootloader is switched away from the
	// abandoned update first, and its system does not start.
	vm.ExpectT(t, `cpinit: update abandoned before first use \(abort\): dropping the unused checkpoint`, SlotBootTimeout)
	vm.ExpectT(t, `cpinit: the update of slot _b was abandoned before it ran`, SlotBootTimeout)
	vm.ExpectT(t, `cpinit: state=fresh .* action=reboot-other-slot`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(vm.Output(), "sysinit: pid=1") {
		t.Fatal("the abandoned update's system was started")
	}
	d.Slot[0] = "sysinit.action=report"
	vm, slot = d.Boot(t, "")
	if slot != 0 {
		t.Fatalf("after the abort the bootloader picked slot %d, want the old slot 0", slot)
	}
	vm.ExpectT(t, `cpinit: state=fresh .* action=mount-plain`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	if r := WantRecord(t, d, bootstate.StateFresh); r.TargetSlot != "" || r.COWPath != "" {
		t.Fatalf("record after the old slot booted: %+v", r)
	}
	if diff := UserdataManifestT(t, d).Diff(before, 5); len(diff) > 0 {
		t.Fatalf("userdata changed:\n%s", strings.Join(diff, "\n"))
	}
}

// TestBadInputOverflow: the trial writes more than the 16 MiB COW holds. The
// snapshot goes Invalid; `cpinit watch` exits 3; the running system's `cpinit status` says rollback
// is no longer possible; the next boot records committed(overflow), warns on
// the console, keeps the update's data and deletes the COW file. No merge is
// attempted.
func TestBadInputOverflow(t *testing.T) {
	t.Parallel()
	d := NewTestDevice(t, 14)
	OTABegin(t, d, "16M")
	// cpinit watch, only warning, sees the overflow and exits 3: the
	// status cpinit-watch.service does not restart on.
	vm := TrialBoot(t, d, "sysinit.action=workload sysinit.seed=14 sysinit.mib=40 sysinit.watch=warn sysinit.watchargs=--interval,250ms")
	vm.ExpectT(t, `sysinit: workload done`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: watch exit=exit status 3\r?\n`, SlotBootTimeout)
	vm.ExpectT(t, `COW used: +unusable: the snapshot is invalid \(the COW overflowed or hit an I/O error\)`, SlotBootTimeout)
	vm.ExpectT(t, `rollback possible: false`, SlotBootTimeout)
	vm.ExpectT(t, `note: +the COW overflowed: rollback is no longer possible`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}

	d.Slot[1] = "sysinit.action=report"
	vm, _ = d.Boot(t, "")
	vm.ExpectT(t, `cpinit: WARNING: the COW store /.cpinit/cow overflowed; rollback is impossible, keeping the current data and deleting the checkpoint`, SlotBootTimeout)
	vm.ExpectT(t, `cpinit: state=fresh .* action=finish-commit-cleanup`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: hello.txt="written by the update"`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(vm.Output(), "merge") {
		t.Fatal("a merge was attempted on an overflowed COW")
	}
	WantRecord(t, d, bootstate.StateFresh)
	m := UserdataManifestT(t, d)
	if _, ok := m["new/file000"]; !ok {
		t.Fatal("the update's data is gone after the overflow")
	}
	if exists, err := d.COWFileExists(); err != nil || exists {
		t.Fatalf("COW file still in userdata after the overflow (err %v)", err)
	}
}

// TestBadInputOverflowAtRollback: the COW overflows, then the update fails
// (rollback requested). The merge would restore garbage: cpinit records the
// overflow instead, keeps the current data and says so.
func TestBadInputOverflowAtRollback(t *testing.T) {
	t.Parallel()
	d := NewTestDevice(t, 15)
	OTABegin(t, d, "16M")
	vm := TrialBoot(t, d, "sysinit.action=workload sysinit.seed=15 sysinit.mib=40")
	vm.ExpectT(t, `rollback possible: false`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	d.Slot[1] = "sysinit.action=report"
	vm, _ = d.Boot(t, "cpinit.abort=1")
	vm.ExpectT(t, `cpinit: rolling back userdata \(abort`, SlotBootTimeout)
	vm.ExpectT(t, `cpinit: WARNING: the COW store /.cpinit/cow overflowed; rollback is impossible, keeping the current data`, SlotBootTimeout)
	vm.ExpectT(t, `cpinit: state=fresh .* action=finish-commit-cleanup`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: hello.txt="written by the update"`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(vm.Output(), "cpinit: merge:") {
		t.Fatal("an overflowed COW was merged")
	}
	WantRecord(t, d, bootstate.StateFresh)
	UserdataManifestT(t, d)
	if exists, err := d.COWFileExists(); err != nil || exists {
		t.Fatalf("COW file still in userdata (err %v)", err)
	}
}

// TestBadInputBeginTooBig: `cpinit begin --size` larger than the free space
// is refused before anything is written: the store stays blank and no COW
// file or leftover appears.
func TestBadInputBeginTooBig(t *testing.T) {
	t.Parallel()
	d := NewTestDevice(t, 16)
	d.Slot[0] = "sysinit.action=ota sysinit.cowsize=300M"
	vm, _ := d.Boot(t, "")
	vm.ExpectT(t, `refusing to begin: a 300 MiB COW file does not fit: userdata has \d+ MiB free and begin keeps --reserve 128 MiB free.*pass a smaller --size \(at most \d+ MiB here\)`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: error: ota begin: exit status 1`, SlotBootTimeout)
	vm.ExpectT(t, `state: +fresh`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	r := WantRecord(t, d, bootstate.StateFresh)
	if r.COWPath != "" {
		t.Fatalf("a refused begin left COW path %q in the record", r.COWPath)
	}
	if exists, err := d.COWFileExists(); err != nil || exists {
		t.Fatalf("a refused begin left a COW file (err %v)", err)
	}

	// A nearly full userdata and the default size: half the space above
	// the reserve is too small to be worth a checkpoint.
	big := filepath.Join(d.Dir, "big.bin")
	if err := os.WriteFile(big, bytes.Repeat([]byte{0x5a}, 200<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	debugfsW(t, d, "write "+big+" big.bin")
	os.Remove(big)
	d.Slot[0] = "sysinit.action=ota"
	vm, _ = d.Boot(t, "")
	vm.ExpectT(t, `refusing to begin: a \d+ MiB checkpoint \(50%\) is too small to be useful: userdata has \d+ MiB free and begin keeps --reserve 128 MiB; the trial.s writes, new files included, must fit in the COW \(docs/cow-sizing.md\): free some space in userdata`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: error: ota begin: exit status 1`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	if r := WantRecord(t, d, bootstate.StateFresh); r.COWPath != "" {
		t.Fatalf("a refused begin left COW path %q in the record", r.COWPath)
	}
	if exists, err := d.COWFileExists(); err != nil || exists {
		t.Fatalf("a refused begin left a COW file (err %v)", err)
	}
	UserdataManifestT(t, d)
}

// TestBadInputKernelParams: malformed cpinit.* parameters stop the boot
// before any device is touched, with the parameter named; an unknown key
// only warns.
func TestBadInputKernelParams(t *testing.T) {
	t.Parallel()
	d := NewTestDevice(t, 17)
	OTABegin(t, d, "32M")
	u := snapshotImages(t, d)
	d.Slot[1] = "sysinit.action=report"
	vm, _ := d.Boot(t, "cpinit.abort=maybe cpinit.metadata= cpinit.rootwait=soon cpinit.bogus=1")
	vm.ExpectT(t, `cpinit: warning: ignoring unknown kernel parameter cpinit.bogus=1 \(known: `, SlotBootTimeout)
	vm.ExpectT(t, `cpinit: FATAL: kernel parameter cpinit.abort=maybe: want 1 or 0`, SlotBootTimeout)
	vm.ExpectT(t, `kernel parameter cpinit.metadata=: needs a value`, SlotBootTimeout)
	vm.ExpectT(t, `kernel parameter cpinit.rootwait=soon: want a duration`, SlotBootTimeout)
	vm.ExpectT(t, `stopping the machine \(reboot`, SlotBootTimeout)
	vm.Wait(SlotBootTimeout)
	u.check(t, d, "boot with bad kernel parameters")
	WantRecord(t, d, bootstate.StateCheckpointing)

	// Mount options the filesystem rejects, on the update's first boot:
	// the snapshot exists by then, the mount fails, nothing is written
	// through it; the message names the parameter.
	vm, _ = d.Boot(t, "cpinit.mountopts=noatime,bogus")
	vm.ExpectT(t, `cpinit: FATAL: .*mount /newroot/data: .*invalid argument \(check cpinit.fstype=ext4 and cpinit.mountopts=noatime,bogus\)`, SlotBootTimeout)
	vm.ExpectT(t, `userdata was not mounted and the checkpoint is kept`, SlotBootTimeout)
	vm.Wait(SlotBootTimeout)
	// (The snapshot was created: its COW header is in userdata now.)
	if r := WantRecord(t, d, bootstate.StateCheckpointing); !r.Active {
		t.Fatal("checkpoint not active after the snapshot was created")
	}
	// Fixed: the next boot reattaches the checkpoint (flag options such as
	// noatime are mount flags, not filesystem data).
	vm, _ = d.Boot(t, "cpinit.mountopts=noatime")
	vm.ExpectT(t, `cpinit: state=checkpointing/active .* action=reattach-snapshot`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: hello.txt="written before the update"`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
}

// TestBadInputNoSnapshotModule: the initramfs lacks dm-snapshot. A fresh
// boot needs no device-mapper and mounts plainly; the trial boot of an
// armed checkpoint cannot create the snapshot and stops, naming the module,
// without mounting userdata. With the module back the trial proceeds.
func TestBadInputNoSnapshotModule(t *testing.T) {
	t.Parallel()
	d := NewTestDevice(t, 18)
	good := d.Initrd
	d.Initrd = noSnapshotInitramfs(t, good)
	OTABegin(t, d, "32M")
	u := snapshotImages(t, d)
	u.metadata = "" // the boot attempt is counted
	d.Slot[1] = "sysinit.action=report"
	vm, _ := d.Boot(t, "")
	m := vm.ExpectT(t, `cpinit: FATAL: .*dm-snapshot.*`, SlotBootTimeout)
	t.Logf("console: %s", m[0])
	vm.ExpectT(t, `this kernel lacks device-mapper snapshots: ship dm-mod, dm-bufio and dm-snapshot in the initramfs and list them in /etc/cpinit/modules`, SlotBootTimeout)
	vm.ExpectT(t, `userdata was not mounted and the checkpoint is kept: fix the cause above and reboot`, SlotBootTimeout)
	vm.ExpectT(t, `stopping the machine \(reboot`, SlotBootTimeout)
	vm.Wait(SlotBootTimeout)
	if strings.Contains(vm.Output(), "mounted=") {
		t.Fatal("userdata mounted without dm-snapshot while a checkpoint is armed")
	}
	if imageHash(t, d.Userdata) != u.userdata {
		t.Fatal("userdata changed by a boot without dm-snapshot")
	}
	if r := WantRecord(t, d, bootstate.StateCheckpointing); r.Active {
		t.Fatal("checkpoint marked active without a snapshot")
	}

	d.Initrd = good
	vm = TrialBoot(t, d, "sysinit.action=report")
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
}

// noSnapshotInitramfs is the product initramfs without dm-snapshot (and
// dm-bufio, which only it needs): the records of src (the device's product
// image) with the two modules, their modules.dep lines and their
// /etc/cpinit/modules entries taken out. Derived from the image the other
// tests boot rather than built again (a u-root build costs about 45
// CPU-seconds), so it is the same cpinit with the same modules but these
// two, for the device's architecture.
func noSnapshotInitramfs(t *testing.T, src string) string {
	t.Helper()
	drop := map[string]bool{"dm-snapshot": true, "dm-bufio": true}
	isDropped := func(relPath string) bool {
		return drop[strings.TrimSuffix(path.Base(relPath), ".ko")]
	}
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(in))
	if err != nil {
		t.Fatalf("%s: %v", src, err)
	}
	var out []cpio.Record
	dropped := map[string]bool{}
	for _, r := range recs {
		switch {
		case strings.HasPrefix(r.Name, "lib/modules/") && isDropped(r.Name):
			dropped[path.Base(r.Name)] = true
			continue
		case r.Name == "etc/cpinit/modules" || strings.HasPrefix(r.Name, "lib/modules/") && path.Base(r.Name) == "modules.dep":
			b, err := io.ReadAll(io.NewSectionReader(r, 0, int64(r.FileSize)))
			if err != nil {
				t.Fatalf("%s in %s: %v", r.Name, src, err)
			}
			var keep []string
			for _, l := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
				name, deps, isDep := strings.Cut(l, ":")
				switch {
				case isDep && isDropped(name):
					continue
				case isDep:
					for _, d := range strings.Fields(deps) {
						if isDropped(d) {
							t.Fatalf("%s in %s: %s depends on %s, which this image drops", r.Name, src, name, d)
						}
					}
				case isDropped(strings.TrimSpace(l)):
					continue
				}
				keep = append(keep, l)
			}
			r = cpio.StaticFile(r.Name, strings.Join(keep, "\n")+"\n", uint64(r.Mode&0o7777))
		}
		out = append(out, r)
	}
	if len(dropped) != len(drop) {
		t.Fatalf("%s holds %v of the modules %v", src, dropped, drop)
	}
	p := filepath.Join(t.TempDir(), "cpinit-nosnap.cpio")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	w := cpio.Newc.Writer(f)
	if err := cpio.WriteRecords(w, out); err != nil {
		t.Fatal(err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// bootWithout boots the slot the bootloader picks with one of the harness's
// kernel parameters replaced (the bootloader configuration lost or changed
// it).
func bootWithout(t *testing.T, d *ABDevice, param, replacement string) *VM {
	t.Helper()
	slot, err := d.SelectSlot()
	if err != nil {
		t.Fatal(err)
	}
	o := d.Options(slot, "")
	if !strings.Contains(o.Append, param) {
		t.Fatalf("no %q in %q", param, o.Append)
	}
	o.Append = strings.Replace(o.Append, param, replacement, 1)
	return StartT(t, o)
}

// TestBadInputMetadataParamWrong: with a checkpoint armed, the kernel
// command line loses cpinit.metadata= or names the wrong device (another
// partition holding a filesystem). Either way cpinit must not take the
// store for blank: that would mount userdata raw while a checkpoint exists
// and format someone else's partition.
func TestBadInputMetadataParamWrong(t *testing.T) {
	t.Parallel()
	d := NewTestDevice(t, 20)
	OTABegin(t, d, "32M")
	u := snapshotImages(t, d)
	sysB := imageHash(t, d.Systems[1])
	bothSlots(d, "sysinit.action=report")

	vm := bootWithout(t, d, "cpinit.metadata=/dev/vdd", "cpinit.metadata=/dev/vdb")
	vm.ExpectT(t, `cpinit: FATAL: metadata store \(cpinit.metadata=/dev/vdb\): /dev/vdb holds an ext2/3/4 filesystem labelled "system_b", not a cpinit metadata store: refusing to read, format or write it, and to touch userdata; fix cpinit.metadata=`, SlotBootTimeout)
	vm.ExpectT(t, `stopping the machine \(reboot`, SlotBootTimeout)
	vm.Wait(SlotBootTimeout)
	u.check(t, d, "boot with cpinit.metadata naming a filesystem")
	if imageHash(t, d.Systems[1]) != sysB {
		t.Fatal("cpinit wrote to the partition wrongly named as its metadata store")
	}

	vm = bootWithout(t, d, "cpinit.metadata=/dev/vdd", "")
	vm.ExpectT(t, `cpinit: FATAL: .*userdata holds the COW file /.cpinit/cow of a checkpoint, but no cpinit.metadata= names its metadata store: refusing to mount userdata directly`, SlotBootTimeout)
	vm.ExpectT(t, `stopping the machine \(reboot`, SlotBootTimeout)
	vm.Wait(SlotBootTimeout)
	if strings.Contains(vm.Output(), "mounted=") {
		t.Fatal("userdata mounted raw while a checkpoint exists")
	}
	u.check(t, d, "boot without cpinit.metadata")
	WantRecord(t, d, bootstate.StateCheckpointing)

	// The store wiped (all zeros): blank, which on a first boot means
	// "format it and mount plainly"; beside a COW file it is refused.
	if err := MakeDisk(d.Metadata, 16<<20); err != nil {
		t.Fatal(err)
	}
	u = snapshotImages(t, d)
	vm, _ = d.Boot(t, "")
	vm.ExpectT(t, `cpinit: FATAL: .*userdata holds the COW file /.cpinit/cow of a checkpoint, but the metadata store /dev/vdd \(cpinit.metadata=/dev/vdd\) is blank: refusing to mount userdata directly`, SlotBootTimeout)
	vm.ExpectT(t, "run `cpinit recover keep-current --yes` in recovery mode", SlotBootTimeout)
	vm.Wait(SlotBootTimeout)
	if strings.Contains(vm.Output(), "mounted=") {
		t.Fatal("userdata mounted raw beside a wiped store")
	}
	u.check(t, d, "boot with a wiped store")
}

// TestBadInputTrialDeletesCOW: a rogue update clears the COW file's
// immutable flag, deletes it and writes files that may land in its blocks,
// then fails. The rollback's snapshot view still shows the file (it is the
// data of before the update), but the saved chunks may be overwritten:
// cpinit also checks the current filesystem and refuses the merge. An
// operator then keeps the current data.
func TestBadInputTrialDeletesCOW(t *testing.T) {
	t.Parallel()
	d := NewTestDevice(t, 23)
	OTABegin(t, d, "32M")
	vm := TrialBoot(t, d, "sysinit.action=workload sysinit.unpin=1 sysinit.seed=23 sysinit.mib=8 sysinit.then=crash")
	vm.ExpectT(t, `sysinit: deleted the COW file`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: crashing`, SlotBootTimeout)
	vm.Wait(SlotBootTimeout)

	d.Slot[1] = "sysinit.action=report"
	vm, _ = d.Boot(t, "cpinit.abort=1")
	vm.ExpectT(t, `cpinit: rolling back userdata \(abort`, SlotBootTimeout)
	changedCOWStopped(t, vm, `COW file /.cpinit/cow on /dev/vdc changed since .cpinit begin.: .*no such file or directory; the saved chunks may have been overwritten: merging would write garbage into userdata`)
	// Verified before recorded: the refused rollback left the trial's
	// record and misc as they were.
	WantRecord(t, d, bootstate.StateCheckpointing)

	bothSlots(d, "sysinit.action=cmd sysinit.args=recover,keep-current,--yes")
	vm, _ = d.Boot(t, "cpinit.recovery=1")
	vm.ExpectT(t, `a checkpoint for slot "_b" exists \(active=true, \d+ trial boots\): keeping the current data drops it like a commit`, SlotBootTimeout)
	vm.ExpectT(t, `kept the current data`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	bothSlots(d, "sysinit.action=report")
	vm, _ = d.Boot(t, "")
	vm.ExpectT(t, `cpinit: state=fresh .* action=finish-commit-cleanup`, SlotBootTimeout)
	vm.ExpectT(t, `sysinit: hello.txt="written by the update"`, SlotBootTimeout)
	if err := vm.Wait(SlotBootTimeout); err != nil {
		t.Fatal(err)
	}
	WantRecord(t, d, bootstate.StateFresh)
	UserdataManifestT(t, d)
}
