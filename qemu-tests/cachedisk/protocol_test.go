package cachedisk

import (
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestNBDProtocolEdges speaks the protocol by hand for what qemu-io never
// sends: an option the server refuses (structured replies), NBD_OPT_GO's
// replies, a command that was not advertised, a read past the end, DISC.
func TestNBDProtocolEdges(t *testing.T) {
	dir := t.TempDir()
	m := NewMachine()
	defer m.Close()
	d, err := m.AddDisk("disk", newImage(t, dir, "disk.img"), filepath.Join(dir, "disk.sock"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", d.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	be := binary.BigEndian
	read := func(n int) []byte {
		t.Helper()
		b := make([]byte, n)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	hello := read(18)
	if be.Uint64(hello) != nbdMagic || be.Uint64(hello[8:]) != nbdOptMagic || be.Uint16(hello[16:]) != flagFixedNewstyle|flagNoZeroes {
		t.Fatalf("hello %x", hello)
	}
	c.Write(be.AppendUint32(nil, flagFixedNewstyle|flagNoZeroes))
	option := func(opt uint32, data []byte) {
		b := be.AppendUint64(nil, nbdOptMagic)
		b = be.AppendUint32(b, opt)
		b = be.AppendUint32(b, uint32(len(data)))
		c.Write(append(b, data...))
	}
	optReply := func() (opt, typ uint32, data []byte) {
		h := read(20)
		if be.Uint64(h) != nbdRepMagic {
			t.Fatalf("option reply magic %x", h[:8])
		}
		return be.Uint32(h[8:]), be.Uint32(h[12:]), read(int(be.Uint32(h[16:])))
	}
	const optStructuredReply = 8
	option(optStructuredReply, nil)
	if opt, typ, _ := optReply(); opt != optStructuredReply || typ != repErrUnsup {
		t.Fatalf("STRUCTURED_REPLY: reply %d type %#x, want ERR_UNSUP", opt, typ)
	}
	// GO, name "", asking for NBD_INFO_BLOCK_SIZE.
	option(optGo, []byte{0, 0, 0, 0, 0, 1, 0, infoBlockSize})
	var sawExport, sawBlock bool
	for {
		opt, typ, data := optReply()
		if opt != optGo {
			t.Fatalf("reply to option %d", opt)
		}
		if typ == repAck {
			break
		}
		if typ != repInfo {
			t.Fatalf("GO: reply type %#x", typ)
		}
		switch be.Uint16(data) {
		case infoExport:
			sawExport = be.Uint64(data[2:]) == imgSize && be.Uint16(data[10:]) == tflagHasFlags|tflagSendFlush|tflagSendFUA
		case infoBlockSize:
			sawBlock = be.Uint32(data[2:]) == 1
		}
	}
	if !sawExport || !sawBlock {
		t.Fatalf("GO: export info %v, block size info %v", sawExport, sawBlock)
	}
	request := func(typ uint16, handle, off uint64, length uint32) (errno uint32) {
		b := be.AppendUint32(nil, nbdReqMagic)
		b = be.AppendUint16(b, 0)
		b = be.AppendUint16(b, typ)
		b = be.AppendUint64(b, handle)
		b = be.AppendUint64(b, off)
		b = be.AppendUint32(b, length)
		c.Write(b)
		if typ == cmdDisc {
			return 0
		}
		h := read(16)
		if be.Uint32(h) != nbdSimpleReply || be.Uint64(h[8:]) != handle {
			t.Fatalf("reply %x to handle %d", h, handle)
		}
		errno = be.Uint32(h[4:])
		if typ == cmdRead && errno == 0 {
			read(int(length))
		}
		return errno
	}
	const cmdTrim = 4
	if e := request(cmdTrim, 1, 0, 4096); e != errInval {
		t.Errorf("TRIM: errno %d, want EINVAL", e)
	}
	if e := request(cmdRead, 2, imgSize-512, 1024); e != errInval {
		t.Errorf("read past the end: errno %d, want EINVAL", e)
	}
	if e := request(cmdRead, 3, imgSize-512, 512); e != 0 {
		t.Errorf("last sector: errno %d", e)
	}
	request(cmdDisc, 4, 0, 0)
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after DISC the server should hang up: %v", err)
	}
}

// TestNBDExportName: the old way into transmission, NBD_OPT_EXPORT_NAME,
// for a client that did not set NO_ZEROES: size, flags, 124 zero bytes.
func TestNBDExportName(t *testing.T) {
	dir := t.TempDir()
	m := NewMachine()
	defer m.Close()
	d, err := m.AddDisk("disk", newImage(t, dir, "disk.img"), filepath.Join(dir, "disk.sock"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", d.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	be := binary.BigEndian
	if _, err := io.ReadFull(c, make([]byte, 18)); err != nil {
		t.Fatal(err)
	}
	b := be.AppendUint32(nil, flagFixedNewstyle)
	b = be.AppendUint64(b, nbdOptMagic)
	b = be.AppendUint32(b, optExportName)
	b = be.AppendUint32(b, 4)
	c.Write(append(b, "disk"...))
	r := make([]byte, 134)
	if _, err := io.ReadFull(c, r); err != nil {
		t.Fatal(err)
	}
	if be.Uint64(r) != imgSize || be.Uint16(r[8:]) != transmissionFlags {
		t.Fatalf("EXPORT_NAME reply %x", r[:10])
	}
	for _, z := range r[10:] {
		if z != 0 {
			t.Fatalf("padding not zero: %x", r[10:])
		}
	}
	// Transmission: a flush is counted and logged.
	req := be.AppendUint32(nil, nbdReqMagic)
	req = be.AppendUint16(req, 0)
	req = be.AppendUint16(req, cmdFlush)
	req = be.AppendUint64(req, 9)
	req = append(req, make([]byte, 12)...)
	c.Write(req)
	h := make([]byte, 16)
	if _, err := io.ReadFull(c, h); err != nil {
		t.Fatal(err)
	}
	if be.Uint32(h[4:]) != 0 || be.Uint64(h[8:]) != 9 || d.Flushes() != 1 {
		t.Fatalf("flush reply %x, %d flushes", h, d.Flushes())
	}
}
