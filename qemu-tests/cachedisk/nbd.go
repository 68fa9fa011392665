package cachedisk

// The NBD protocol, the part this server speaks (the spec is the NBD
// project's doc/proto.md): fixed newstyle negotiation with NBD_OPT_GO,
// NBD_OPT_INFO and NBD_OPT_EXPORT_NAME; simple replies only (every other
// option, structured replies and meta contexts included, gets
// NBD_REP_ERR_UNSUP, after which QEMU's client uses simple replies); READ,
// WRITE (with FUA), FLUSH and DISC. Everything is big-endian.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

const (
	nbdMagic       = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic    = 0x49484156454f5054 // "IHAVEOPT"
	nbdRepMagic    = 0x0003e889045565a9 // option reply
	nbdReqMagic    = 0x25609513
	nbdSimpleReply = 0x67446698

	// handshake flags (server) and client flags
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1

	// transmission flags
	tflagHasFlags  = 1 << 0
	tflagSendFlush = 1 << 2
	tflagSendFUA   = 1 << 3

	optExportName = 1
	optAbort      = 2
	optInfo       = 6
	optGo         = 7

	repAck       = 1
	repInfo      = 3
	repErrUnsup  = 1<<31 | 1
	repErrInvald = 1<<31 | 3

	infoExport    = 0
	infoBlockSize = 3

	cmdRead  = 0
	cmdWrite = 1
	cmdDisc  = 2
	cmdFlush = 3

	cmdFlagFUA = 1 << 0

	errIO    = 5
	errInval = 22
	errNoSpc = 28

	// maxRequest bounds one read or write (QEMU sends at most 32 MiB); a
	// longer one ends the connection.
	maxRequest = 64 << 20
)

// transmissionFlags is what every export advertises: flushes and FUA, no
// TRIM or WRITE_ZEROES (QEMU then writes zeroes as data).
const transmissionFlags = tflagHasFlags | tflagSendFlush | tflagSendFUA

// request is one transmission-phase request.
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	off    uint64
	length uint32
	data   []byte // WRITE's payload
}

// handshake runs the fixed newstyle negotiation for an export of size bytes.
// It returns nil when the client has entered the transmission phase.
func handshake(c net.Conn, size int64) error {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], nbdMagic)
	binary.BigEndian.PutUint64(hello[8:], nbdOptMagic)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.Write(hello[:]); err != nil {
		return err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c, cf[:]); err != nil {
		return err
	}
	clientFlags := binary.BigEndian.Uint32(cf[:])
	if clientFlags&flagFixedNewstyle == 0 {
		return errors.New("nbd: client does not speak fixed newstyle")
	}
	for {
		var h [16]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return err
		}
		if binary.BigEndian.Uint64(h[0:]) != nbdOptMagic {
			return errors.New("nbd: bad option magic")
		}
		opt, n := binary.BigEndian.Uint32(h[8:]), binary.BigEndian.Uint32(h[12:])
		if n > 1<<16 {
			return fmt.Errorf("nbd: option %d with %d bytes of data", opt, n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c, data); err != nil {
			return err
		}
		switch opt {
		case optExportName:
			// Any name: one export per socket. No option reply: size,
			// flags and (unless NO_ZEROES) 124 zero bytes.
			b := make([]byte, 10, 134)
			binary.BigEndian.PutUint64(b[0:], uint64(size))
			binary.BigEndian.PutUint16(b[8:], transmissionFlags)
			if clientFlags&flagNoZeroes == 0 {
				b = b[:134]
			}
			_, err := c.Write(b)
			return err
		case optAbort:
			_ = optReply(c, opt, repAck, nil)
			return errors.New("nbd: client aborted the negotiation")
		case optInfo, optGo:
			if !validGoData(data) {
				if err := optReply(c, opt, repErrInvald, nil); err != nil {
					return err
				}
				continue
			}
			info := make([]byte, 12)
			binary.BigEndian.PutUint16(info[0:], infoExport)
			binary.BigEndian.PutUint64(info[2:], uint64(size))
			binary.BigEndian.PutUint16(info[10:], transmissionFlags)
			if err := optReply(c, opt, repInfo, info); err != nil {
				return err
			}
			if requestsInfo(data, infoBlockSize) {
				// Block sizes, when asked: any byte range will do
				// (the model merges partial sectors), 4 KiB
				// preferred, QEMU's 32 MiB at most.
				bs := make([]byte, 14)
				binary.BigEndian.PutUint16(bs[0:], infoBlockSize)
				binary.BigEndian.PutUint32(bs[2:], 1)
				binary.BigEndian.PutUint32(bs[6:], 4096)
				binary.BigEndian.PutUint32(bs[10:], 32<<20)
				if err := optReply(c, opt, repInfo, bs); err != nil {
					return err
				}
			}
			if err := optReply(c, opt, repAck, nil); err != nil {
				return err
			}
			if opt == optGo {
				return nil
			}
		default:
			// STRUCTURED_REPLY, LIST, STARTTLS, meta contexts, ...
			if err := optReply(c, opt, repErrUnsup, nil); err != nil {
				return err
			}
		}
	}
}

// validGoData checks NBD_OPT_GO/INFO's data: name length, name, number of
// information requests, and that many 16-bit requests.
func validGoData(d []byte) bool {
	if len(d) < 6 {
		return false
	}
	nl := int(binary.BigEndian.Uint32(d))
	if 4+nl+2 > len(d) {
		return false
	}
	nr := int(binary.BigEndian.Uint16(d[4+nl:]))
	return len(d) == 4+nl+2+2*nr
}

// requestsInfo reports whether valid NBD_OPT_GO/INFO data asks for info.
func requestsInfo(d []byte, info uint16) bool {
	nl := int(binary.BigEndian.Uint32(d))
	reqs := d[4+nl+2:]
	for i := 0; i+1 < len(reqs); i += 2 {
		if binary.BigEndian.Uint16(reqs[i:]) == info {
			return true
		}
	}
	return false
}

func optReply(c net.Conn, opt, typ uint32, data []byte) error {
	b := make([]byte, 20+len(data))
	binary.BigEndian.PutUint64(b[0:], nbdRepMagic)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], typ)
	binary.BigEndian.PutUint32(b[16:], uint32(len(data)))
	copy(b[20:], data)
	_, err := c.Write(b)
	return err
}

// readRequest reads one request (and a WRITE's payload).
func readRequest(c net.Conn) (request, error) {
	var h [28]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return request{}, err
	}
	if binary.BigEndian.Uint32(h[0:]) != nbdReqMagic {
		return request{}, errors.New("nbd: bad request magic")
	}
	r := request{
		flags:  binary.BigEndian.Uint16(h[4:]),
		typ:    binary.BigEndian.Uint16(h[6:]),
		handle: binary.BigEndian.Uint64(h[8:]),
		off:    binary.BigEndian.Uint64(h[16:]),
		length: binary.BigEndian.Uint32(h[24:]),
	}
	if (r.typ == cmdRead || r.typ == cmdWrite) && r.length > maxRequest {
		return r, fmt.Errorf("nbd: request of %d bytes", r.length)
	}
	if r.typ == cmdWrite {
		r.data = make([]byte, r.length)
		if _, err := io.ReadFull(c, r.data); err != nil {
			return r, err
		}
	}
	return r, nil
}

// reply sends a simple reply (with data for a successful READ).
func reply(c net.Conn, handle uint64, errno uint32, data []byte) error {
	b := make([]byte, 16, 16+len(data))
	binary.BigEndian.PutUint32(b[0:], nbdSimpleReply)
	binary.BigEndian.PutUint32(b[4:], errno)
	binary.BigEndian.PutUint64(b[8:], handle)
	if errno == 0 {
		b = append(b, data...)
	}
	_, err := c.Write(b)
	return err
}
