package bootstate_test

import (
	"fmt"
	"strings"

	"github.com/cpinit/cpinit/pkg/bootstate"
)

// RAUC's GRUB scheme through the ABState interface, with GRUB played by
// GrubRaucBoot (docs/bootloader-grub.md shows this example). The device
// runs slot a (bootname A); `cpinit begin` marks b bad and then active, as
// `rauc install` does. GRUB gives b one try; the update crashes before
// `cpinit commit`, so at the next power-on GRUB passes over b and boots a,
// where cpinit rolls userdata back and calls FallBackFrom(b). Before that
// call GRUB would find no slot at the boot after (a has had its one try
// too, and nobody marked it good): FallBackFrom resets it and marks b bad.
func ExampleGrubRaucBoot() {
	env, _ := bootstate.NewGrubEnv(bootstate.GrubEnvSize) // grub-editenv FILE create
	env.Set(bootstate.GrubEnvVar{Name: "ORDER", Value: "A B"},
		bootstate.GrubEnvVar{Name: "A_OK", Value: "1"}, bootstate.GrubEnvVar{Name: "A_TRY", Value: "0"},
		bootstate.GrubEnvVar{Name: "B_OK", Value: "0"}, bootstate.GrubEnvVar{Name: "B_TRY", Value: "0"})
	s, _ := bootstate.NewGrubRaucState(env, nil)
	s.SetUnbootable("b") // cpinit begin, as rauc install does
	s.SetActive("b")
	show := func(when string) {
		vars := strings.ReplaceAll(strings.TrimSpace(s.Env().List()), "\n", " ")
		fmt.Printf("%-22s %s  (GRUB boots next: %q)\n", when, vars, s.Next())
	}
	show("after begin:")
	for boot := 1; boot <= 2; boot++ {
		booted, after, _ := bootstate.GrubRaucBoot(s.Env().Encode(), nil)
		e, _ := bootstate.DecodeGrubEnv(after)
		s, _ = bootstate.NewGrubRaucState(e, nil)
		show(fmt.Sprintf("boot %d booted %s:", boot, booted))
		// boot 1: the update crashes before `cpinit commit`
	}
	s.FallBackFrom("b") // cpinit on a: roll back, abandon b
	show("after FallBackFrom(b):")
	// Output:
	// after begin:           ORDER=B A A_OK=1 A_TRY=0 B_OK=1 B_TRY=0  (GRUB boots next: "b")
	// boot 1 booted b:       ORDER=B A A_OK=1 A_TRY=0 B_OK=1 B_TRY=1  (GRUB boots next: "a")
	// boot 2 booted a:       ORDER=B A A_OK=1 A_TRY=1 B_OK=1 B_TRY=1  (GRUB boots next: "")
	// after FallBackFrom(b): ORDER=A B A_OK=1 A_TRY=0 B_OK=0 B_TRY=0  (GRUB boots next: "a")
}
