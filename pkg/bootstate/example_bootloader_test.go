package bootstate_test

import (
	"fmt"

	"github.com/cpinit/cpinit/pkg/bootstate"
)

// The A/B boot counter as a bootloader keeps it in misc (docs/integration.md
// shows this example). The device runs slot _a; the OTA agent wrote slot _b
// and ran `cpinit begin`, which marks _b unbootable and then active, as
// update_engine does. At each power-on the bootloader picks a slot and
// counts the attempt before booting it; this update crashes every time, so
// the bootloader falls back to _a, where cpinit rolls userdata back.
func ExampleBootControl_BootloaderSelect() {
	bc, _ := bootstate.NewBootControl(2, 0) // slot _a running, marked successful
	bc.SetUnbootable(1)                     // cpinit begin, as update_engine does
	bc.SetActive(1, 0)
	for boot := 1; ; boot++ {
		slot := bc.BootloaderSelect()
		b := bc.Slots[1]
		fmt.Printf("boot %d: %s (slot _b: priority %d, tries left %d, successful %v)\n",
			boot, bootstate.SlotSuffixes[slot], b.Priority, b.TriesRemaining, b.SuccessfulBoot)
		if slot == 0 {
			break // the fallback boot: cpinit sees booted _a, target _b, and rolls back
		}
		// the update crashed before `cpinit commit` (which would have
		// called MarkSuccessful(1) and ended the trial)
	}
	// Output:
	// boot 1: _b (slot _b: priority 15, tries left 5, successful false)
	// boot 2: _b (slot _b: priority 15, tries left 4, successful false)
	// boot 3: _b (slot _b: priority 15, tries left 3, successful false)
	// boot 4: _b (slot _b: priority 15, tries left 2, successful false)
	// boot 5: _b (slot _b: priority 15, tries left 1, successful false)
	// boot 6: _b (slot _b: priority 15, tries left 0, successful false)
	// boot 7: _a (slot _b: priority 15, tries left 0, successful false)
}
