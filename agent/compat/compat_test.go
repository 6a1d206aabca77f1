// Package compat checks that hearth-agent speaks the reference agent
// protocol byte for byte. It drives an agent served in-process on a hybrid
// vsock socket through raw CONNECT lines. Its frame encoder and decoder are
// its own, written from the protocol's frame tables, and it does not
// import agentproto, so a mistake shared by the agent and agentproto
// cannot hide here.
package compat

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/hearthvm/hearth/agent"
	"github.com/hearthvm/hearth/agentlink"
)

// Frame types of the reference protocol.
const (
	typeStart     = 0x01
	typeStdin     = 0x02
	typeResize    = 0x03
	typeEOF       = 0x04
	typeClockSync = 0x05
	typeStdout    = 0x10
	typeStderr    = 0x11
	typeExit      = 0x12
	typeWriteReq  = 0x20
	typeData      = 0x21
	typeDone      = 0x22
	typeReadReq   = 0x23
	typeAck       = 0x30
	typeErr       = 0x31
)

// Agent ports of the reference protocol.
const (
	portExec = 52
	portFile = 53
)

// encode returns [type u8][length u32 LE][payload].
func encode(typ byte, payload []byte) []byte {
	b := make([]byte, 5, 5+len(payload))
	b[0] = typ
	binary.LittleEndian.PutUint32(b[1:5], uint32(len(payload)))
	return append(b, payload...)
}

type frame struct {
	typ     byte
	payload []byte
}

// decode reads one frame. It returns io.EOF only at a clean end of stream.
func decode(r io.Reader) (frame, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return frame{}, err
	}
	n := binary.LittleEndian.Uint32(hdr[1:])
	if n > 16<<20 {
		return frame{}, fmt.Errorf("frame 0x%02x announces %d bytes, over the 16 MiB limit", hdr[0], n)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return frame{}, fmt.Errorf("payload of frame 0x%02x: %w", hdr[0], err)
	}
	return frame{hdr[0], payload}, nil
}

// readAll reads frames until the agent closes the stream.
func readAll(t *testing.T, r io.Reader) []frame {
	t.Helper()
	var frames []frame
	for {
		f, err := decode(r)
		if errors.Is(err, io.EOF) {
			return frames
		}
		if err != nil {
			t.Fatalf("read frame %d: %v", len(frames), err)
		}
		frames = append(frames, f)
	}
}

// wireBytes re-encodes frames, for comparison with expected bytes.
func wireBytes(frames []frame) []byte {
	var b []byte
	for _, f := range frames {
		b = append(b, encode(f.typ, f.payload)...)
	}
	return b
}

type server struct {
	socket string
	root   string
}

func startServer(t *testing.T) *server {
	t.Helper()
	s := &server{socket: filepath.Join(t.TempDir(), "v.sock"), root: t.TempDir()}
	srv := agent.NewServer(agent.Options{FileRoot: s.root, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = agentlink.ServeHybrid(ctx, s.socket, srv.HandleConn)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return s
}

var okLine = regexp.MustCompile(`^OK [0-9]+\n$`)

// connect opens a stream to port with a raw CONNECT line and checks the
// OK line. The returned reader continues after the OK line.
func (s *server) connect(t *testing.T, port int) (net.Conn, *bufio.Reader) {
	t.Helper()
	var conn net.Conn
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		conn, err = net.Dial("unix", s.socket)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("connect to %s: %v", s.socket, err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := conn.SetDeadline(time.Now().Add(60 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("read OK line: %v", err)
	}
	if !okLine.MatchString(line) {
		t.Fatalf("got reply %q to CONNECT, want \"OK <port>\\n\"", line)
	}
	return conn, br
}

func send(t *testing.T, w io.Writer, frames ...[]byte) {
	t.Helper()
	if _, err := w.Write(bytes.Join(frames, nil)); err != nil {
		t.Fatalf("send: %v", err)
	}
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// TestExecExactBytes checks complete agent streams whose bytes the
// protocol fixes.
func TestExecExactBytes(t *testing.T) {
	tests := []struct {
		name string
		send [][]byte
		want []byte
	}{
		{
			name: "stdout and exit code",
			send: [][]byte{encode(typeStart, []byte(`{"cmd":["sh","-c","printf hi; exit 3"]}`))},
			// STDOUT "hi", then EXIT 3 as i32 LE.
			want: mustHex("1002000000" + "6869" + "1204000000" + "03000000"),
		},
		{
			name: "stderr",
			send: [][]byte{encode(typeStart, []byte(`{"cmd":["sh","-c","printf e >&2"]}`))},
			want: mustHex("1101000000" + "65" + "1204000000" + "00000000"),
		},
		{
			name: "stdin then EOF",
			send: [][]byte{
				encode(typeStart, []byte(`{"cmd":["cat"]}`)),
				encode(typeStdin, []byte("ab")),
				encode(typeEOF, nil),
			},
			want: mustHex("1002000000" + "6162" + "1204000000" + "00000000"),
		},
		{
			name: "exit code 255",
			send: [][]byte{encode(typeStart, []byte(`{"cmd":["sh","-c","exit 255"]}`))},
			want: mustHex("1204000000" + "ff000000"),
		},
		{
			name: "clock sync answers EXIT 0",
			// 2031-05-06T07:08:09Z and 0 ns.
			send: [][]byte{encode(typeClockSync, binary.LittleEndian.AppendUint32(
				binary.LittleEndian.AppendUint64(nil, 1935990489), 0))},
			want: mustHex("1204000000" + "00000000"),
		},
	}
	s := startServer(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn, br := s.connect(t, portExec)
			send(t, conn, tc.send...)
			if got := wireBytes(readAll(t, br)); !bytes.Equal(got, tc.want) {
				t.Errorf("got bytes %x, want %x", got, tc.want)
			}
		})
	}
}

// TestExecTerminal runs a terminal session with RESIZE: the size reaches
// the command and output arrives as STDOUT only.
func TestExecTerminal(t *testing.T) {
	s := startServer(t)
	conn, br := s.connect(t, portExec)
	send(t, conn,
		encode(typeStart, []byte(`{"cmd":["sh","-c","read x; stty size; exit 2"],"tty":true,"tty_width":100,"tty_height":30}`)),
		// RESIZE to 132 columns (0x84) by 43 rows (0x2b).
		encode(typeResize, []byte{0x84, 0x00, 0x2b, 0x00}),
		encode(typeStdin, []byte("go\n")))

	frames := readAll(t, br)
	if len(frames) == 0 {
		t.Fatal("got no frames, want STDOUT and EXIT")
	}
	var out []byte
	for _, f := range frames[:len(frames)-1] {
		if f.typ != typeStdout {
			t.Fatalf("got frame 0x%02x in a terminal session, want only STDOUT before EXIT", f.typ)
		}
		out = append(out, f.payload...)
	}
	if !bytes.Contains(out, []byte("43 132")) {
		t.Errorf("got terminal output %q, want it to contain the resized \"43 132\"", out)
	}
	if last := frames[len(frames)-1]; last.typ != typeExit || !bytes.Equal(last.payload, []byte{2, 0, 0, 0}) {
		t.Errorf("got last frame 0x%02x %x, want EXIT 02000000", last.typ, last.payload)
	}
}

func TestFileWriteRead(t *testing.T) {
	s := startServer(t)
	content := bytes.Repeat([]byte{0x00, 0xff, 'x'}, 100000)

	conn, br := s.connect(t, portFile)
	send(t, conn,
		encode(typeWriteReq, []byte(`{"path":"/dir/../w.bin","mode":384}`)),
		encode(typeData, content[:200000]),
		encode(typeData, content[200000:]),
		encode(typeDone, nil))
	if got, want := wireBytes(readAll(t, br)), mustHex("3000000000"); !bytes.Equal(got, want) {
		t.Fatalf("got reply %x to the write, want ACK %x", got, want)
	}
	info, err := os.Stat(filepath.Join(s.root, "w.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode() != 0o600 {
		t.Errorf("got mode %v, want -rw------- (384)", info.Mode())
	}

	conn, br = s.connect(t, portFile)
	send(t, conn, encode(typeReadReq, []byte(`{"path":"/w.bin"}`)))
	frames := readAll(t, br)
	if len(frames) < 2 {
		t.Fatalf("got %d frames, want DATA and DONE", len(frames))
	}
	var got []byte
	for _, f := range frames[:len(frames)-1] {
		if f.typ != typeData {
			t.Fatalf("got frame 0x%02x before DONE, want DATA", f.typ)
		}
		got = append(got, f.payload...)
	}
	// DONE is empty and the last frame: a reference host gets no trailer.
	if last := encode(frames[len(frames)-1].typ, frames[len(frames)-1].payload); !bytes.Equal(last, mustHex("2200000000")) {
		t.Errorf("got last frame %x, want DONE 2200000000", last)
	}
	if !bytes.Equal(got, content) {
		t.Errorf("read %d bytes, want the %d written", len(got), len(content))
	}
}

func TestFileErrors(t *testing.T) {
	tests := []struct {
		name string
		send [][]byte
		want string
	}{
		{"read a missing file", [][]byte{encode(typeReadReq, []byte(`{"path":"/missing"}`))}, `read "/missing": not found`},
		{"write into a missing directory", [][]byte{
			encode(typeWriteReq, []byte(`{"path":"/no/f","mode":420}`)),
			encode(typeData, []byte("x")),
			encode(typeDone, nil),
		}, `write "/no/f": parent directory "/no" not found; set mkdirs to create it`},
	}
	s := startServer(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn, br := s.connect(t, portFile)
			send(t, conn, tc.send...)
			frames := readAll(t, br)
			if len(frames) != 1 || frames[0].typ != typeErr {
				t.Fatalf("got %d frames, want exactly one ERR", len(frames))
			}
			if got := string(frames[0].payload); got != tc.want {
				t.Errorf("got ERR %q, want %q", got, tc.want)
			}
		})
	}
}
