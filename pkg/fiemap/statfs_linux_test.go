package fiemap

import (
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// Statfs_t.Type is int64 on 64-bit architectures and int32 on arm and 386,
// where the kernel's f_type of f2fs (0xf2f52010, above 1<<31) reads back
// negative. The test stores each magic as the kernel's bits in whatever
// type this architecture has (go test under qemu-arm and GOARCH=386 runs
// it with int32), then checks that fsMagic and the lookups recognise it.
func TestFSMagicEveryWordSize(t *testing.T) {
	for magic, name := range map[uint32]string{
		unix.EXT4_SUPER_MAGIC: "ext4",
		unix.F2FS_SUPER_MAGIC: "f2fs",
		unix.CIFS_SUPER_MAGIC: "cifs",
		unix.XFS_SUPER_MAGIC:  "xfs",
	} {
		var st unix.Statfs_t
		v := reflect.ValueOf(&st.Type).Elem()
		switch v.Kind() {
		case reflect.Int32:
			v.SetInt(int64(int32(magic)))
		case reflect.Int64:
			v.SetInt(int64(magic))
		default:
			t.Fatalf("Statfs_t.Type is %v on this architecture; fsMagic assumes int32 or int64", v.Kind())
		}
		if got := fsMagic(&st); got != magic {
			t.Errorf("%s: fsMagic = %#x, want %#x", name, got, magic)
		}
		if got := fsName(fsMagic(&st)); got != name {
			t.Errorf("fsName(%#x) = %q, want %q", magic, got, name)
		}
	}
}
