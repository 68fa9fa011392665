package bootstate_test

import (
	"fmt"

	"github.com/cpinit/cpinit/pkg/bootstate"
)

// systemd-boot's boot counting as cpinit drives it
// (docs/bootloader-systemd-boot.md shows this example). Slot a runs,
// blessed; the OTA agent wrote slot b and ran `cpinit begin`, which renames
// b's entry to a rank above a's with 3 tries. At each power-on systemd-boot
// boots the first entry in its order and renames it, counting the try; this
// update crashes every time, so after 3 tries its entry sorts last and
// systemd-boot boots slot a, where cpinit rolls userdata back.
func ExampleBLSState_Boot() {
	entry := func(file string) bootstate.BLSEntry {
		return bootstate.BLSEntry{File: file, Info: bootstate.BLSEntryInfo{Loader: "/vmlinuz"}, Loadable: true}
	}
	s, err := bootstate.NewBLSState(bootstate.BLSConfig{}, "/boot/efi/loader/entries",
		[]bootstate.BLSEntry{entry("cpinit-1-a.conf"), entry("cpinit-0-b+0.conf")},
		bootstate.BLSLoaderConfig{}, bootstate.BLSVars{})
	if err != nil {
		panic(err)
	}
	s.SetActive("b") // cpinit begin
	fmt.Println("begin:", s.Entries[0].File, s.Entries[1].File)
	for boot := 1; ; boot++ {
		next, booted := s.Boot()
		fmt.Printf("boot %d: slot %s, entries now %s %s\n", boot, booted.Slot, next.Entries[0].File, next.Entries[1].File)
		s = next
		if booted.Slot == "a" {
			break // the fallback boot: cpinit sees booted a, target b, and rolls back
		}
		// the update crashed before boot-complete.target: neither
		// systemd-bless-boot nor `cpinit commit` blessed the entry
	}
	// Output:
	// begin: cpinit-1-a.conf cpinit-2-b+3.conf
	// boot 1: slot b, entries now cpinit-1-a.conf cpinit-2-b+2-1.conf
	// boot 2: slot b, entries now cpinit-1-a.conf cpinit-2-b+1-2.conf
	// boot 3: slot b, entries now cpinit-1-a.conf cpinit-2-b+0-3.conf
	// boot 4: slot a, entries now cpinit-1-a.conf cpinit-2-b+0-3.conf
}
