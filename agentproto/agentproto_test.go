package agentproto

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// writeCounter records each Write call separately.
type writeCounter struct {
	writes [][]byte
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.writes = append(w.writes, append([]byte(nil), p...))
	return len(p), nil
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFrameEncoding checks every frame type of the wire contract against
// bytes written out by hand: [type u8][length u32 LE][payload].
func TestFrameEncoding(t *testing.T) {
	tests := []struct {
		name    string
		typ     FrameType
		payload []byte
		want    []byte
	}{
		{
			name:    "START",
			typ:     TypeStart,
			payload: mustJSON(t, StartRequest{Cmd: []string{"ls"}}),
			want:    append([]byte{0x01, 0x0e, 0x00, 0x00, 0x00}, `{"cmd":["ls"]}`...),
		},
		{
			name:    "STDIN",
			typ:     TypeStdin,
			payload: []byte("hi"),
			want:    []byte{0x02, 0x02, 0x00, 0x00, 0x00, 'h', 'i'},
		},
		{
			name:    "RESIZE 200 columns 50 rows",
			typ:     TypeResize,
			payload: EncodeResize(200, 50),
			want:    []byte{0x03, 0x04, 0x00, 0x00, 0x00, 0xc8, 0x00, 0x32, 0x00},
		},
		{
			name:    "RESIZE 300 columns 1000 rows",
			typ:     TypeResize,
			payload: EncodeResize(300, 1000),
			want:    []byte{0x03, 0x04, 0x00, 0x00, 0x00, 0x2c, 0x01, 0xe8, 0x03},
		},
		{
			name: "EOF",
			typ:  TypeEOF,
			want: []byte{0x04, 0x00, 0x00, 0x00, 0x00},
		},
		{
			name:    "CLOCK_SYNC",
			typ:     TypeClockSync,
			payload: EncodeClockSync(time.Unix(0x0102030405, 0x06070809)),
			want: []byte{0x05, 0x0c, 0x00, 0x00, 0x00,
				0x05, 0x04, 0x03, 0x02, 0x01, 0x00, 0x00, 0x00,
				0x09, 0x08, 0x07, 0x06},
		},
		{
			name:    "CLOCK_SYNC before 1970",
			typ:     TypeClockSync,
			payload: EncodeClockSync(time.Unix(-1, 0)),
			want: []byte{0x05, 0x0c, 0x00, 0x00, 0x00,
				0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
				0x00, 0x00, 0x00, 0x00},
		},
		{
			name:    "STDOUT",
			typ:     TypeStdout,
			payload: []byte("out"),
			want:    []byte{0x10, 0x03, 0x00, 0x00, 0x00, 'o', 'u', 't'},
		},
		{
			name:    "STDOUT of 257 bytes",
			typ:     TypeStdout,
			payload: bytes.Repeat([]byte{'x'}, 257),
			want:    append([]byte{0x10, 0x01, 0x01, 0x00, 0x00}, bytes.Repeat([]byte{'x'}, 257)...),
		},
		{
			name:    "STDERR",
			typ:     TypeStderr,
			payload: []byte("err"),
			want:    []byte{0x11, 0x03, 0x00, 0x00, 0x00, 'e', 'r', 'r'},
		},
		{
			name:    "EXIT 7",
			typ:     TypeExit,
			payload: EncodeExit(7),
			want:    []byte{0x12, 0x04, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00},
		},
		{
			name:    "EXIT 137",
			typ:     TypeExit,
			payload: EncodeExit(137),
			want:    []byte{0x12, 0x04, 0x00, 0x00, 0x00, 0x89, 0x00, 0x00, 0x00},
		},
		{
			name:    "EXIT -1",
			typ:     TypeExit,
			payload: EncodeExit(-1),
			want:    []byte{0x12, 0x04, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff},
		},
		{
			name:    "WRITE_REQ",
			typ:     TypeWriteReq,
			payload: mustJSON(t, WriteRequest{Path: "/a", Mode: 420}),
			want:    append([]byte{0x20, 0x18, 0x00, 0x00, 0x00}, `{"path":"/a","mode":420}`...),
		},
		{
			name:    "DATA",
			typ:     TypeData,
			payload: []byte{0x00, 0xff},
			want:    []byte{0x21, 0x02, 0x00, 0x00, 0x00, 0x00, 0xff},
		},
		{
			name: "DONE",
			typ:  TypeDone,
			want: []byte{0x22, 0x00, 0x00, 0x00, 0x00},
		},
		{
			name:    "READ_REQ",
			typ:     TypeReadReq,
			payload: mustJSON(t, ReadRequest{Path: "/a"}),
			want:    append([]byte{0x23, 0x0d, 0x00, 0x00, 0x00}, `{"path":"/a"}`...),
		},
		{
			name: "ACK",
			typ:  TypeAck,
			want: []byte{0x30, 0x00, 0x00, 0x00, 0x00},
		},
		{
			name:    "ERR",
			typ:     TypeErr,
			payload: []byte("no"),
			want:    []byte{0x31, 0x02, 0x00, 0x00, 0x00, 'n', 'o'},
		},
		{
			name:    "SHUTDOWN",
			typ:     TypeShutdown,
			payload: mustJSON(t, ShutdownRequest{GraceMillis: 300}),
			want:    append([]byte{0x40, 0x10, 0x00, 0x00, 0x00}, `{"grace_ms":300}`...),
		},
		{
			name: "PING",
			typ:  TypePing,
			want: []byte{0x41, 0x00, 0x00, 0x00, 0x00},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := AppendFrame(nil, tc.typ, tc.payload); !bytes.Equal(got, tc.want) {
				t.Errorf("AppendFrame: got % x, want % x", got, tc.want)
			}

			var w writeCounter
			if err := WriteFrame(&w, tc.typ, tc.payload); err != nil {
				t.Fatalf("WriteFrame: %v", err)
			}
			if len(w.writes) != 1 {
				t.Fatalf("WriteFrame: got %d Write calls, want 1", len(w.writes))
			}
			if !bytes.Equal(w.writes[0], tc.want) {
				t.Errorf("WriteFrame: got % x, want % x", w.writes[0], tc.want)
			}

			f, err := ReadFrame(bytes.NewReader(tc.want))
			if err != nil {
				t.Fatalf("ReadFrame: %v", err)
			}
			if f.Type != tc.typ {
				t.Errorf("ReadFrame: got type %s, want %s", f.Type, tc.typ)
			}
			if !bytes.Equal(f.Payload, tc.payload) {
				t.Errorf("ReadFrame: got payload % x, want % x", f.Payload, tc.payload)
			}
		})
	}
}

func TestAppendFrameKeepsPrefix(t *testing.T) {
	got := AppendFrame([]byte{0xaa}, TypeEOF, nil)
	want := []byte{0xaa, 0x04, 0x00, 0x00, 0x00, 0x00}
	if !bytes.Equal(got, want) {
		t.Errorf("got % x, want % x", got, want)
	}
}

func TestReadFrameSequence(t *testing.T) {
	stream := []byte{
		0x02, 0x01, 0x00, 0x00, 0x00, 'a',
		0x04, 0x00, 0x00, 0x00, 0x00,
	}
	r := bytes.NewReader(stream)
	want := []Frame{{TypeStdin, []byte("a")}, {TypeEOF, []byte{}}}
	for i, w := range want {
		f, err := ReadFrame(r)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if f.Type != w.Type || !bytes.Equal(f.Payload, w.Payload) {
			t.Errorf("frame %d: got %s % x, want %s % x", i, f.Type, f.Payload, w.Type, w.Payload)
		}
	}
	if _, err := ReadFrame(r); err != io.EOF {
		t.Errorf("after the last frame: got error %v, want io.EOF", err)
	}
}

type failingReader struct{ err error }

func (r failingReader) Read([]byte) (int, error) { return 0, r.err }

func TestReadFrameErrors(t *testing.T) {
	errBroken := errors.New("connection broken")
	tests := []struct {
		name string
		r    io.Reader
		want error
	}{
		{"empty stream", bytes.NewReader(nil), io.EOF},
		{"partial header", bytes.NewReader([]byte{0x10, 0x05, 0x00}), io.ErrUnexpectedEOF},
		{"header only", bytes.NewReader([]byte{0x10, 0x05, 0x00, 0x00, 0x00}), io.ErrUnexpectedEOF},
		{"short payload", bytes.NewReader([]byte{0x10, 0x05, 0x00, 0x00, 0x00, 'a', 'b'}), io.ErrUnexpectedEOF},
		{"length 16 MiB + 1", bytes.NewReader([]byte{0x01, 0x01, 0x00, 0x00, 0x01}), ErrPayloadTooLarge},
		{"length 2^32-1", bytes.NewReader([]byte{0x02, 0xff, 0xff, 0xff, 0xff}), ErrPayloadTooLarge},
		{"reader error", failingReader{errBroken}, errBroken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadFrame(tc.r)
			if !errors.Is(err, tc.want) {
				t.Errorf("got error %v, want %v", err, tc.want)
			}
		})
	}
}

func TestReadFrameMaxPayload(t *testing.T) {
	frame := AppendFrame(nil, TypeData, make([]byte, MaxPayload))
	if got := frame[1:5]; !bytes.Equal(got, []byte{0x00, 0x00, 0x00, 0x01}) {
		t.Fatalf("got length bytes % x for 16 MiB, want 00 00 00 01", got)
	}
	f, err := ReadFrame(bytes.NewReader(frame))
	if err != nil {
		t.Fatalf("got error %v for a payload of exactly 16 MiB, want none", err)
	}
	if len(f.Payload) != MaxPayload {
		t.Errorf("got payload of %d bytes, want %d", len(f.Payload), MaxPayload)
	}
}

func TestWriteFrameTooLarge(t *testing.T) {
	var w writeCounter
	err := WriteFrame(&w, TypeData, make([]byte, MaxPayload+1))
	if !errors.Is(err, ErrPayloadTooLarge) {
		t.Errorf("got error %v, want ErrPayloadTooLarge", err)
	}
	if len(w.writes) != 0 {
		t.Errorf("got %d Write calls, want none", len(w.writes))
	}
}

// TestStartRequestJSON checks the START field names of the reference
// agent.
func TestStartRequestJSON(t *testing.T) {
	full := StartRequest{
		Cmd:            []string{"sh", "-c", "echo hi"},
		Env:            map[string]string{"A": "1"},
		WorkingDir:     "/w",
		User:           "u",
		TTY:            true,
		TTYWidth:       120,
		TTYHeight:      40,
		TimeoutSeconds: 5,
	}
	tests := []struct {
		name string
		req  StartRequest
		want string
	}{
		{"all fields", full, `{"cmd":["sh","-c","echo hi"],"env":{"A":"1"},"working_dir":"/w","user":"u",` +
			`"tty":true,"tty_width":120,"tty_height":40,"timeout_seconds":5}`},
		{"defaults omitted", StartRequest{Cmd: []string{"true"}}, `{"cmd":["true"]}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(mustJSON(t, tc.req)); got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}

	got, err := DecodeStart([]byte(tests[0].want))
	if err != nil {
		t.Fatal(err)
	}
	if string(mustJSON(t, got)) != tests[0].want {
		t.Errorf("round trip: got %+v, want %+v", got, full)
	}
}

func TestDecodeStartDefaults(t *testing.T) {
	req, err := DecodeStart([]byte(`{"cmd":["sh"],"tty":true}`))
	if err != nil {
		t.Fatal(err)
	}
	if req.TTYWidth != 80 || req.TTYHeight != 24 {
		t.Errorf("got terminal %dx%d, want 80x24", req.TTYWidth, req.TTYHeight)
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name    string
		decode  func() error
		wantErr string
	}{
		{"START not JSON", func() error { _, err := DecodeStart([]byte("{")); return err }, "invalid START payload"},
		{"START without cmd", func() error { _, err := DecodeStart([]byte(`{}`)); return err }, "cmd is empty"},
		{"START with empty program", func() error { _, err := DecodeStart([]byte(`{"cmd":[""]}`)); return err }, "cmd is empty"},
		{"START cmd not strings", func() error { _, err := DecodeStart([]byte(`{"cmd":[1]}`)); return err }, "invalid START payload"},
		{"RESIZE 3 bytes", func() error { _, _, err := DecodeResize([]byte{1, 2, 3}); return err }, "want 4"},
		{"EXIT 5 bytes", func() error { _, err := DecodeExit([]byte{1, 2, 3, 4, 5}); return err }, "want 4"},
		{"CLOCK_SYNC 11 bytes", func() error { _, err := DecodeClockSync(make([]byte, 11)); return err }, "want 12"},
		{"CLOCK_SYNC nanoseconds 10^9", func() error {
			_, err := DecodeClockSync([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0xca, 0x9a, 0x3b})
			return err
		}, "out of range"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.decode()
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("got error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestPayloadRoundTrips(t *testing.T) {
	cols, rows, err := DecodeResize(EncodeResize(65535, 1))
	if err != nil || cols != 65535 || rows != 1 {
		t.Errorf("RESIZE: got %dx%d, %v, want 65535x1", cols, rows, err)
	}

	for _, code := range []int32{0, 1, 127, -1, -2147483648, 2147483647} {
		got, err := DecodeExit(EncodeExit(code))
		if err != nil || got != code {
			t.Errorf("EXIT %d: got %d, %v", code, got, err)
		}
	}

	when := time.Date(2031, 5, 6, 7, 8, 9, 999999999, time.UTC)
	got, err := DecodeClockSync(EncodeClockSync(when))
	if err != nil || !got.Equal(when) {
		t.Errorf("CLOCK_SYNC: got %v, %v, want %v", got, err, when)
	}
}

func TestFrameTypeString(t *testing.T) {
	tests := []struct {
		typ  FrameType
		want string
	}{
		{TypeStart, "START"},
		{TypeClockSync, "CLOCK_SYNC"},
		{TypeReadReq, "READ_REQ"},
		{TypePing, "PING"},
		{FrameType(0x7f), "0x7f"},
	}
	for _, tc := range tests {
		if got := tc.typ.String(); got != tc.want {
			t.Errorf("FrameType(0x%02x).String(): got %q, want %q", uint8(tc.typ), got, tc.want)
		}
	}
}
