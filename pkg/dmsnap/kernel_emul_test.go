package dmsnap

// Host-side emulation of what drivers/md/dm-ioctl.c does with our buffers,
// written from the kernel source, so the codec is tested against the
// kernel's reading of the layout and not only against itself.

import (
	"fmt"
)

// kernelPopulate walks a DM_TABLE_LOAD block as populate_table/next_target
// do: first spec at data_start, then spec = last + last.next; the params
// string must be NUL-terminated before the end of the block.
func kernelPopulate(buf []byte) ([]TargetSpec, error) {
	h, err := parseHeader(buf)
	if err != nil {
		return nil, err
	}
	if h.TargetCount == 0 {
		return nil, fmt.Errorf("populate_table: no targets specified")
	}
	end := int(h.DataSize)
	last := 0 // "struct dm_target_spec *spec = (struct dm_target_spec *) param"
	next := int(h.DataStart)
	var out []TargetSpec
	for i := 0; i < int(h.TargetCount); i++ {
		spec := last + next
		if spec < last+sizeofTargetSpec {
			return nil, fmt.Errorf("next_target: spec %d at %d before end of previous", i, spec)
		}
		if spec+sizeofTargetSpec > end {
			return nil, fmt.Errorf("next_target: spec %d at %d beyond %d", i, spec, end)
		}
		params, ok := cstring(buf[spec+sizeofTargetSpec : end])
		if !ok {
			return nil, fmt.Errorf("invalid_str: params of target %d", i)
		}
		typ, _ := cstring(buf[spec+24 : spec+24+maxTargetType])
		out = append(out, TargetSpec{
			Start:  ne.Uint64(buf[spec:]),
			Length: ne.Uint64(buf[spec+8:]),
			Type:   typ,
			Params: params,
		})
		next = int(ne.Uint32(buf[spec+20:]))
		last = spec
	}
	return out, nil
}

// kernelStatusAnswer builds the answer retrieve_status writes for specs into
// a block of size bytes (the size the caller handed in), including the
// DM_BUFFER_FULL_FLAG cases.
func kernelStatusAnswer(h ioctlHeader, specs []TargetSpec, size int) []byte {
	buf := make([]byte, size)
	h.Version = [3]uint32{4, 47, 0}
	h.DataStart = dataStart
	h.DataSize = ioctlDataOffset
	h.TargetCount = uint32(len(specs))
	outbuf := dataStart
	length := size - dataStart
	if length < 0 {
		length = 0
	}
	outptr := outbuf
	used := 0
	for _, s := range specs {
		remaining := length - (outptr - outbuf)
		if remaining <= sizeofTargetSpec {
			h.Flags |= flagBufferFull
			break
		}
		spec := outptr
		ne.PutUint64(buf[spec:], s.Start)
		ne.PutUint64(buf[spec+8:], s.Length)
		copy(buf[spec+24:spec+24+maxTargetType-1], s.Type)
		outptr += sizeofTargetSpec
		remaining = length - (outptr - outbuf)
		// The target's status function writes at most remaining bytes
		// (snprintf-like, truncating).
		text := s.Params
		if len(text)+1 > remaining {
			text = text[:remaining-1]
		}
		copy(buf[outptr:], text)
		buf[outptr+len(text)] = 0
		l := len(text) + 1
		if l == remaining {
			h.Flags |= flagBufferFull
			break
		}
		outptr += l
		used = outbuf + (outptr - outbuf)
		outptr = align8(outptr)
		if outptr > outbuf+length {
			h.Flags |= flagBufferFull
			break
		}
		ne.PutUint32(buf[spec+20:], uint32(outptr-outbuf))
	}
	if used != 0 {
		h.DataSize = uint32(used)
	}
	hb := make([]byte, sizeofIoctl)
	if err := putHeader(hb, &h); err != nil {
		panic(err)
	}
	copy(buf, hb)
	return buf
}

// kernelNameList builds a DM_LIST_DEVICES answer as list_devices does with
// DM_UUID_FLAG set.
func kernelNameList(devs []DeviceEntry, size int) []byte {
	needed := 0
	for _, d := range devs {
		needed += align8(12 + len(d.Name) + 1)
		needed += align8(8)
		if d.UUID != "" {
			needed += align8(len(d.UUID) + 1)
		}
	}
	buf := make([]byte, size)
	h := ioctlHeader{Version: [3]uint32{4, 47, 0}, DataStart: dataStart, DataSize: ioctlDataOffset, Flags: flagUUID}
	if size-dataStart < needed || size-dataStart < 8 {
		h.Flags |= flagBufferFull
	} else {
		h.DataSize = uint32(dataStart + needed)
		nl := dataStart
		old := -1
		for _, d := range devs {
			if old >= 0 {
				ne.PutUint32(buf[old+8:], uint32(nl-old))
			}
			ne.PutUint64(buf[nl:], encodeDev(d.Dev))
			copy(buf[nl+12:], d.Name)
			old = nl
			ev := align8(nl + 12 + len(d.Name) + 1)
			ne.PutUint32(buf[ev:], d.EventNr)
			p := align8(ev + 8)
			if d.UUID != "" {
				ne.PutUint32(buf[ev+4:], nameListHasUUID)
				copy(buf[p:], d.UUID)
				p = align8(p + len(d.UUID) + 1)
			} else {
				ne.PutUint32(buf[ev+4:], 2) // DM_NAME_LIST_FLAG_DOESNT_HAVE_UUID
			}
			nl = p
		}
	}
	hb := make([]byte, sizeofIoctl)
	if err := putHeader(hb, &h); err != nil {
		panic(err)
	}
	copy(buf, hb)
	return buf
}

// kernelVersions builds a DM_LIST_VERSIONS answer as __list_versions does.
func kernelVersions(vs []TargetVersion, size int) []byte {
	needed := 0
	for _, v := range vs {
		needed += 16 + len(v.Name) + 1 + 7
	}
	buf := make([]byte, size)
	h := ioctlHeader{Version: [3]uint32{4, 47, 0}, DataStart: dataStart, DataSize: ioctlDataOffset}
	if size-dataStart < needed {
		h.Flags |= flagBufferFull
	} else {
		h.DataSize = uint32(dataStart + needed)
		p := dataStart
		old := -1
		for _, v := range vs {
			if old >= 0 {
				ne.PutUint32(buf[old:], uint32(p-old))
			}
			for i, x := range v.Version {
				ne.PutUint32(buf[p+4+4*i:], x)
			}
			copy(buf[p+16:], v.Name)
			old = p
			p = align8(p + 16 + len(v.Name) + 1)
		}
	}
	hb := make([]byte, sizeofIoctl)
	if err := putHeader(hb, &h); err != nil {
		panic(err)
	}
	copy(buf, hb)
	return buf
}
