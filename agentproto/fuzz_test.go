package agentproto

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
)

// FuzzReadFrame checks that ReadFrame never panics, never returns a
// payload over MaxPayload, and that every frame it returns encodes back
// to exactly the bytes it consumed.
func FuzzReadFrame(f *testing.F) {
	f.Add(AppendFrame(nil, TypeStart, []byte(`{"cmd":["ls"]}`)))
	f.Add(append(AppendFrame(nil, TypeStdin, []byte("hi")), AppendFrame(nil, TypeEOF, nil)...))
	f.Add([]byte{byte(TypeData), 0x01, 0x00, 0x00, 0x01})
	f.Add([]byte{byte(TypeExit), 0x04, 0x00})
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, input []byte) {
		r := bytes.NewReader(input)
		for {
			before := r.Len()
			fr, err := ReadFrame(r)
			if err != nil {
				if errors.Is(err, io.EOF) && before != 0 {
					t.Fatalf("got io.EOF with %d bytes left, want io.ErrUnexpectedEOF or a frame", before)
				}
				return
			}
			if len(fr.Payload) > MaxPayload {
				t.Fatalf("got a payload of %d bytes, want at most %d", len(fr.Payload), MaxPayload)
			}
			consumed := input[len(input)-before : len(input)-r.Len()]
			if got := AppendFrame(nil, fr.Type, fr.Payload); !bytes.Equal(got, consumed) {
				t.Fatalf("frame re-encodes to %x, want the %x it was read from", got, consumed)
			}
		}
	})
}

// FuzzDecodeStart checks that DecodeStart never panics and that an
// accepted request is valid and survives a JSON round trip.
func FuzzDecodeStart(f *testing.F) {
	f.Add([]byte(`{"cmd":["ls","-l"],"env":{"A":"b"},"working_dir":"/tmp","user":"1000:1000","tty":true,"tty_width":120,"tty_height":40,"timeout_seconds":5,"exit_detail":true}`))
	f.Add([]byte(`{"cmd":[]}`))
	f.Add([]byte(`{"cmd":[""]}`))
	f.Add([]byte(`{"cmd":"ls"}`))
	f.Add([]byte(`null`))

	f.Fuzz(func(t *testing.T, payload []byte) {
		req, err := DecodeStart(payload)
		if err != nil {
			return
		}
		if len(req.Cmd) == 0 || req.Cmd[0] == "" || req.TTYWidth == 0 || req.TTYHeight == 0 {
			t.Fatalf("accepted invalid request %+v", req)
		}
		b, err := json.Marshal(req)
		if err != nil {
			t.Fatalf("encode accepted request: %v", err)
		}
		again, err := DecodeStart(b)
		if err != nil {
			t.Fatalf("re-decode %s: %v", b, err)
		}
		if again.TTYWidth != req.TTYWidth || len(again.Cmd) != len(req.Cmd) || again.ExitDetail != req.ExitDetail {
			t.Fatalf("round trip changed the request: got %+v, want %+v", again, req)
		}
	})
}

// FuzzFileRequests feeds one payload to every file-channel and control
// decoder: none may panic, and an accepted path is never empty.
func FuzzFileRequests(f *testing.F) {
	f.Add([]byte(`{"path":"/a","mode":420,"uid":0,"gid":0,"size":5,"sha256":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824","mkdirs":true}`))
	f.Add([]byte(`{"path":"/a","digest":true}`))
	f.Add([]byte(`{"from":"/a","to":"/b"}`))
	f.Add([]byte(`{"path":"/d","mode":493,"parents":true,"recursive":true}`))
	f.Add([]byte(`{"size":5,"sha256":"00"}`))
	f.Add([]byte(`{"address":"192.0.2.7/24","gateway":"192.0.2.1","interface":"eth0"}`))
	f.Add([]byte("\x0f\x00\x00\x00"))

	f.Fuzz(func(t *testing.T, payload []byte) {
		if req, err := DecodeWriteRequest(payload); err == nil && (req.Path == "" || req.Mode > 0o7777) {
			t.Fatalf("WRITE_REQ: accepted %+v", req)
		}
		if req, err := DecodeReadRequest(payload); err == nil && req.Path == "" {
			t.Fatalf("READ_REQ: accepted an empty path")
		}
		if d, err := DecodeDigest(payload); err == nil && (d.Size < 0 || len(d.SHA256) != 64) {
			t.Fatalf("DIGEST: accepted %+v", d)
		}
		for _, typ := range []FrameType{TypeStat, TypeList} {
			if req, err := DecodePathRequest(typ, payload); err == nil && req.Path == "" {
				t.Fatalf("%s: accepted an empty path", typ)
			}
		}
		if req, err := DecodeMkdirRequest(payload); err == nil && (req.Path == "" || req.Mode > 0o7777) {
			t.Fatalf("MKDIR: accepted %+v", req)
		}
		if req, err := DecodeRemoveRequest(payload); err == nil && req.Path == "" {
			t.Fatalf("REMOVE: accepted an empty path")
		}
		if req, err := DecodeRenameRequest(payload); err == nil && (req.From == "" || req.To == "") {
			t.Fatalf("RENAME: accepted %+v", req)
		}
		if cfg, err := DecodeNetConfig(payload); err == nil && (!cfg.Address.Addr().Is4() || cfg.Interface == "") {
			t.Fatalf("NETCONFIG: accepted %+v", cfg)
		}
		if sig, err := DecodeSignal(payload); err == nil && (sig == 0 || sig > MaxSignal) {
			t.Fatalf("SIGNAL: accepted %d", sig)
		}
	})
}
