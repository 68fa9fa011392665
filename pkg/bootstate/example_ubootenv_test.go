package bootstate_test

import (
	"fmt"

	"github.com/cpinit/cpinit/pkg/bootstate"
)

// RAUC's U-Boot scheme (docs/bootloader-uboot.md shows this example). The
// device runs slot a (bootname A); the update agent wrote slot b and made it
// primary, as `rauc install` does. At each power-on RAUC's boot script
// (contrib/uboot.sh) takes the first bootname in BOOT_ORDER with attempts
// left and counts the attempt; this update crashes every time, so after its
// three attempts the script boots A, where cpinit rolls userdata back.
func ExampleSimulateUBootBoot() {
	env, _ := bootstate.NewUBootEnv("BOOT_ORDER", "A B", "BOOT_A_LEFT", "3", "BOOT_B_LEFT", "3")
	s, _ := bootstate.NewUBootState(env, bootstate.UBootSchemeConfig{}) // scheme detected: uboot-rauc
	s.SetActive("b")                                                    // BOOT_ORDER="B A", BOOT_B_LEFT=3
	for boot := 1; boot <= 4; boot++ {
		slot, _ := bootstate.SimulateUBootBoot(s)
		order, _ := env.Get("BOOT_ORDER")
		a, _ := env.Get("BOOT_A_LEFT")
		b, _ := env.Get("BOOT_B_LEFT")
		fmt.Printf("boot %d: %s (BOOT_ORDER=%q BOOT_A_LEFT=%s BOOT_B_LEFT=%s)\n", boot, slot, order, a, b)
	}
	// cpinit's rollback tells RAUC's scheme that B is bad (mark-bad).
	s.FallBackFrom("b")
	order, _ := env.Get("BOOT_ORDER")
	fmt.Printf("after FallBackFrom(b): BOOT_ORDER=%q, next %s\n", order, s.Next())
	// Output:
	// boot 1: b (BOOT_ORDER="B A" BOOT_A_LEFT=3 BOOT_B_LEFT=2)
	// boot 2: b (BOOT_ORDER="B A" BOOT_A_LEFT=3 BOOT_B_LEFT=1)
	// boot 3: b (BOOT_ORDER="B A" BOOT_A_LEFT=3 BOOT_B_LEFT=0)
	// boot 4: a (BOOT_ORDER="B A" BOOT_A_LEFT=2 BOOT_B_LEFT=0)
	// after FallBackFrom(b): BOOT_ORDER="A", next a
}
