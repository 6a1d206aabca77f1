package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hearthvm/hearth/agentproto"
)

// sessionDeadline bounds every test session, so a hang fails the test
// instead of blocking the run.
const sessionDeadline = 60 * time.Second

// Frame type bytes, written out so that the tests check the wire values
// rather than trust the constants of agentproto.
const (
	wireStart       = 0x01
	wireStdin       = 0x02
	wireResize      = 0x03
	wireEOF         = 0x04
	wireClockSync   = 0x05
	wireStdout      = 0x10
	wireStderr      = 0x11
	wireExit        = 0x12
	wireReadReq     = 0x23
	wireAck         = 0x30
	wireErr         = 0x31
	wireShutdown    = 0x40
	wirePing        = 0x41
	wireNetConfig   = 0x42
	wireSignal      = 0x43
	wireExitDetail  = 0x44
	wireWriteReq    = 0x20
	wireData        = 0x21
	wireDone        = 0x22
	wireStat        = 0x45
	wireList        = 0x46
	wireMkdir       = 0x47
	wireRemove      = 0x48
	wireRename      = 0x49
	wireFileInfo    = 0x4a
	wireListEntries = 0x4b
	wireDigest      = 0x4c
)

// rawFrame is a frame as read byte by byte from the connection.
type rawFrame struct {
	typ     byte
	payload []byte
}

// readRawFrame reads one frame: a type byte, a little-endian u32 length
// and the payload.
func readRawFrame(r io.Reader) (rawFrame, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return rawFrame{}, err
	}
	n := binary.LittleEndian.Uint32(hdr[1:])
	if n > 16<<20 {
		return rawFrame{}, fmt.Errorf("frame type 0x%02x with length %d over 16 MiB", hdr[0], n)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return rawFrame{}, fmt.Errorf("read payload of frame type 0x%02x: %w", hdr[0], err)
	}
	return rawFrame{typ: hdr[0], payload: payload}, nil
}

// writeRawFrame writes one frame in a single Write call.
func writeRawFrame(t *testing.T, w io.Writer, typ byte, payload []byte) {
	t.Helper()
	b := []byte{typ, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(b[1:], uint32(len(payload)))
	if _, err := w.Write(append(b, payload...)); err != nil {
		t.Fatalf("write frame 0x%02x: %v", typ, err)
	}
}

func writeStart(t *testing.T, w io.Writer, req agentproto.StartRequest) {
	t.Helper()
	payload, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	writeRawFrame(t, w, wireStart, payload)
}

// testLogger discards agent logs unless HEARTH_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("HEARTH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newTestServer returns a server whose clock setter fails the test, so
// that no test can change the clock of the machine it runs on.
func newTestServer(t *testing.T, opts Options) *Server {
	t.Helper()
	opts.Logger = testLogger()
	srv := NewServer(opts)
	srv.setClock = func(time.Time) error {
		t.Error("the agent tried to set the system clock in a test")
		return errors.New("setting the clock is not allowed in tests")
	}
	return srv
}

// dial returns the host end of a connection that srv serves on port. The
// cleanup closes it and checks that HandleConn returns.
func dial(t *testing.T, srv *Server, port uint32) net.Conn {
	t.Helper()
	host, agentEnd := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.HandleConn(context.Background(), port, agentEnd)
	}()
	if err := host.SetDeadline(time.Now().Add(sessionDeadline)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		host.Close()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("HandleConn did not return 30 s after the host closed the connection")
		}
	})
	return host
}

// execResult is what a host received in one exec session.
type execResult struct {
	stdout []byte
	stderr []byte
	code   int32
	// detail is the EXIT_DETAIL payload, nil when none arrived.
	detail []byte
}

// collect reads frames until EXIT and checks that EXIT is the last frame.
func collect(t *testing.T, conn net.Conn) execResult {
	t.Helper()
	res, err := readUntilExit(conn)
	if err != nil {
		t.Fatalf("read exec session: %v (stdout so far %q, stderr %q)", err, truncate(res.stdout), res.stderr)
	}
	return res
}

func readUntilExit(conn net.Conn) (execResult, error) {
	var res execResult
	for {
		f, err := readRawFrame(conn)
		if err != nil {
			return res, err
		}
		switch f.typ {
		case wireStdout:
			res.stdout = append(res.stdout, f.payload...)
		case wireStderr:
			res.stderr = append(res.stderr, f.payload...)
		case wireExitDetail:
			if res.detail != nil {
				return res, errors.New("got a second EXIT_DETAIL frame")
			}
			res.detail = f.payload
		case wireExit:
			if len(f.payload) != 4 {
				return res, fmt.Errorf("EXIT payload has %d bytes, want 4", len(f.payload))
			}
			res.code = int32(binary.LittleEndian.Uint32(f.payload))
			if extra, err := readRawFrame(conn); !errors.Is(err, io.EOF) {
				return res, fmt.Errorf("after EXIT got frame 0x%02x and error %v, want the connection closed", extra.typ, err)
			}
			return res, nil
		default:
			return res, fmt.Errorf("unexpected frame type 0x%02x from the agent", f.typ)
		}
	}
}

// runCommand runs req in a new session of srv and returns its result.
func runCommand(t *testing.T, srv *Server, req agentproto.StartRequest) execResult {
	t.Helper()
	conn := dial(t, srv, agentproto.PortExec)
	writeStart(t, conn, req)
	return collect(t, conn)
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

// firstLineInt parses the first line of out as an integer.
func firstLineInt(t *testing.T, out []byte) int {
	t.Helper()
	line, _, _ := strings.Cut(string(out), "\n")
	n, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("first output line %q is not a number: %v", line, err)
	}
	return n
}

// procEntry is the part of /proc/<pid>/stat the tests look at.
type procEntry struct {
	pid   int
	state byte
	ppid  int
	pgrp  int
}

// listProcs reads every process of the host's /proc.
func listProcs(t *testing.T) []procEntry {
	t.Helper()
	dirs, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	var procs []procEntry
	for _, path := range dirs {
		data, err := os.ReadFile(path)
		if err != nil {
			continue // the process exited meanwhile
		}
		// The command name may contain spaces and parentheses, so the
		// fields are counted from the last ')'.
		i := bytes.LastIndexByte(data, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(data[i+1:]))
		if len(fields) < 3 {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(path)))
		ppid, _ := strconv.Atoi(fields[1])
		pgrp, _ := strconv.Atoi(fields[2])
		procs = append(procs, procEntry{pid: pid, state: fields[0][0], ppid: ppid, pgrp: pgrp})
	}
	return procs
}

// waitForNoProcs polls /proc until match holds for no process, and
// returns the last matching processes when the deadline passes first.
func waitForNoProcs(t *testing.T, deadline time.Duration, match func(procEntry) bool) []procEntry {
	t.Helper()
	end := time.Now().Add(deadline)
	for {
		var found []procEntry
		for _, p := range listProcs(t) {
			if match(p) {
				found = append(found, p)
			}
		}
		if len(found) == 0 || time.Now().After(end) {
			return found
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// liveInGroup matches processes of process group pgid that have not
// exited; zombies are dead and wait only for their parent.
func liveInGroup(pgid int) func(procEntry) bool {
	return func(p procEntry) bool { return p.pgrp == pgid && p.state != 'Z' }
}

func (p procEntry) String() string {
	return fmt.Sprintf("pid %d (state %c, parent %d, group %d)", p.pid, p.state, p.ppid, p.pgrp)
}
