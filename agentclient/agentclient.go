// Package agentclient is the host side of hearth-agent's sessions: it runs
// a command over an exec stream (agent port 52), transfers and manages
// files over file streams (port 53) and sends control requests (port 54).
// Every function takes a net.Conn that already reached the agent port,
// serves one request on it and closes it, so the package is the same for
// every transport in package agentlink.
package agentclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/hearthvm/hearth/agentproto"
)

// stdinChunk is the largest STDIN payload sent per frame.
const stdinChunk = 32 << 10

// ExecIO carries the streams of one command. Nil writers discard output; a
// nil Stdin sends EOF at once. Resize, when set, delivers terminal size
// changes for a TTY session. Signals, when set, delivers signals to the
// command's process group, or in a TTY session to the terminal's
// foreground process group.
type ExecIO struct {
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer
	Resize  <-chan TerminalSize
	Signals <-chan syscall.Signal
}

// Result describes the end of a command.
type Result struct {
	// Code is the exit code: the exit status, 128+N for a command killed
	// by signal N, 124 after timeout_seconds, or the agent's codes 125
	// (rejected request), 126 (cannot start) and 127 (not found).
	Code int32
	// Signal names the signal that killed the command, such as
	// "SIGKILL"; empty when it exited on its own.
	Signal   string
	TimedOut bool
	// Reason is one of the agentproto.Reason constants, or empty when
	// the agent sent no EXIT_DETAIL.
	Reason string
}

// TerminalSize is a terminal's size in columns and rows.
type TerminalSize struct {
	Width, Height uint16
}

// Exec runs req on conn, an open stream to the agent's exec port, and
// returns how the command ended. It sets exit_detail in START. It
// closes conn before returning. When ctx ends first, conn is closed,
// which makes the agent kill the command, and ctx's error is returned.
func Exec(ctx context.Context, conn net.Conn, req agentproto.StartRequest, stdio ExecIO) (Result, error) {
	defer conn.Close()

	req.ExitDetail = true
	start, err := json.Marshal(req)
	if err != nil {
		return Result{}, fmt.Errorf("encode START: %w", err)
	}
	var wmu sync.Mutex
	send := func(t agentproto.FrameType, payload []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		return agentproto.WriteFrame(conn, t, payload)
	}
	first := agentproto.AppendFrame(make([]byte, 0, 2*agentproto.HeaderSize+len(start)), agentproto.TypeStart, start)
	if stdio.Stdin == nil {
		// Without stdin, EOF goes out with START in one write.
		first = agentproto.AppendFrame(first, agentproto.TypeEOF, nil)
	}
	if _, err := conn.Write(first); err != nil {
		return Result{}, fmt.Errorf("send START: %w", err)
	}

	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	inputDone := make(chan struct{})
	defer close(inputDone)
	if stdio.Stdin != nil {
		go forwardStdin(stdio.Stdin, send, inputDone)
	}
	if stdio.Resize != nil {
		go forwardResize(stdio.Resize, send, inputDone)
	}
	if stdio.Signals != nil {
		go forwardSignals(stdio.Signals, send, inputDone)
	}

	res, err := readOutput(conn, stdio.Stdout, stdio.Stderr)
	if err != nil && ctx.Err() != nil {
		return Result{}, ctx.Err()
	}
	return res, err
}

// forwardStdin copies stdin as STDIN frames and sends EOF when it ends.
// Send errors end it quietly: the reader side reports the broken session.
func forwardStdin(stdin io.Reader, send func(agentproto.FrameType, []byte) error, done <-chan struct{}) {
	buf := make([]byte, stdinChunk)
	for {
		n, err := stdin.Read(buf)
		if n > 0 {
			select {
			case <-done:
				return
			default:
			}
			if send(agentproto.TypeStdin, buf[:n]) != nil {
				return
			}
		}
		if err != nil {
			break
		}
	}
	select {
	case <-done:
	default:
		_ = send(agentproto.TypeEOF, nil)
	}
}

func forwardResize(sizes <-chan TerminalSize, send func(agentproto.FrameType, []byte) error, done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case size, ok := <-sizes:
			if !ok {
				return
			}
			if send(agentproto.TypeResize, agentproto.EncodeResize(size.Width, size.Height)) != nil {
				return
			}
		}
	}
}

func forwardSignals(signals <-chan syscall.Signal, send func(agentproto.FrameType, []byte) error, done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case sig, ok := <-signals:
			if !ok {
				return
			}
			if send(agentproto.TypeSignal, agentproto.EncodeSignal(uint32(sig))) != nil {
				return
			}
		}
	}
}

// readOutput copies STDOUT and STDERR frames until EXIT.
func readOutput(r io.Reader, stdout, stderr io.Writer) (Result, error) {
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	in := agentproto.NewFrameReader(r)
	var detail *agentproto.ExitDetail
	for {
		f, err := in.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return Result{}, errors.New("agent closed the exec session before EXIT")
			}
			return Result{}, fmt.Errorf("read exec output: %w", err)
		}
		switch f.Type {
		case agentproto.TypeStdout:
			if _, err := stdout.Write(f.Payload); err != nil {
				return Result{}, fmt.Errorf("write stdout: %w", err)
			}
		case agentproto.TypeStderr:
			if _, err := stderr.Write(f.Payload); err != nil {
				return Result{}, fmt.Errorf("write stderr: %w", err)
			}
		case agentproto.TypeExitDetail:
			var d agentproto.ExitDetail
			if err := json.Unmarshal(f.Payload, &d); err != nil {
				return Result{}, fmt.Errorf("invalid EXIT_DETAIL payload: %w", err)
			}
			detail = &d
		case agentproto.TypeExit:
			code, err := agentproto.DecodeExit(f.Payload)
			if err != nil {
				return Result{}, err
			}
			res := Result{Code: code}
			if detail != nil {
				if detail.ExitCode != code {
					return Result{}, fmt.Errorf("agent sent EXIT_DETAIL with exit code %d but EXIT with %d", detail.ExitCode, code)
				}
				res.Signal, res.TimedOut, res.Reason = detail.Signal, detail.TimedOut, detail.Reason
			}
			return res, nil
		default:
			return Result{}, fmt.Errorf("unexpected frame %s in exec session", f.Type)
		}
	}
}

// Ping sends PING on conn, an open stream to the control port, and waits
// for ACK. It closes conn.
func Ping(ctx context.Context, conn net.Conn) error {
	return control(ctx, conn, agentproto.TypePing, nil)
}

// Shutdown requests the agent to end its workloads, sync and unmount
// filesystems and end the VM. It returns once the agent has acknowledged;
// the VM exits shortly after. It closes conn.
func Shutdown(ctx context.Context, conn net.Conn, grace time.Duration) error {
	payload, err := json.Marshal(agentproto.ShutdownRequest{GraceMillis: uint32(grace.Milliseconds())})
	if err != nil {
		return err
	}
	return control(ctx, conn, agentproto.TypeShutdown, payload)
}

// ConfigureNetwork requests that the agent of a guest replace the
// address of an interface, its default route and its neighbour cache, for a clone
// restored from a snapshot. An agent that is not a guest's init rejects
// it. It closes conn, an open stream to the control port.
func ConfigureNetwork(ctx context.Context, conn net.Conn, req agentproto.NetConfigRequest) error {
	payload, err := json.Marshal(req)
	if err != nil {
		return err
	}
	return control(ctx, conn, agentproto.TypeNetConfig, payload)
}

// ClockSync sets the guest's wall clock to t over an exec-port stream and
// closes conn.
func ClockSync(ctx context.Context, conn net.Conn, t time.Time) error {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := agentproto.WriteFrame(conn, agentproto.TypeClockSync, agentproto.EncodeClockSync(t)); err != nil {
		return fmt.Errorf("send CLOCK_SYNC: %w", err)
	}
	res, err := readOutput(conn, nil, nil)
	if err != nil {
		return fmt.Errorf("clock sync: %w", err)
	}
	if res.Code != 0 {
		return fmt.Errorf("clock sync: agent returned exit code %d", res.Code)
	}
	return nil
}

func control(ctx context.Context, conn net.Conn, t agentproto.FrameType, payload []byte) error {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := agentproto.WriteFrame(conn, t, payload); err != nil {
		return fmt.Errorf("send %s: %w", t, err)
	}
	f, err := agentproto.ReadFrame(conn)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("read the reply to %s: %w", t, err)
	}
	switch f.Type {
	case agentproto.TypeAck:
		return nil
	case agentproto.TypeErr:
		return fmt.Errorf("agent rejected %s: %s", t, f.Payload)
	default:
		return fmt.Errorf("unexpected frame %s in reply to %s", f.Type, t)
	}
}
