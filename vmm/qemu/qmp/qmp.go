// Package qmp is a client for the QEMU Machine Protocol on a Unix socket.
// It reads the greeting, negotiates capabilities, runs commands with JSON
// arguments and passes asynchronous events (SHUTDOWN, STOP, RESUME...) to
// a callback. It can also send a file descriptor with a command through
// SCM_RIGHTS, which `getfd` needs before a `migrate` to an `fd:` URI.
//
// The package owns one connection; it does not start QEMU and does not know
// the QAPI schema beyond the handshake.
//
// The client is written here rather than taken from
// github.com/digitalocean/go-qemu. That module's qmp.SocketMonitor (read
// at its 2025 version) does send a descriptor through RunWithFile, but it
// refuses to unless the greeting lists the "oob" capability, which has
// nothing to do with descriptor passing. Its commands take no context, so
// a command to a hung QEMU cannot be bounded by a deadline. Its reader
// hands the scanner's reused buffer to the waiting command, and it blocks
// command replies while an event consumer is not reading.
package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// ErrClosed is returned for commands on a client whose connection has
// ended, either through Close or because QEMU closed the socket.
var ErrClosed = errors.New("qmp: connection closed")

// Version is the QEMU version from the QMP greeting.
type Version struct {
	Major int `json:"major"`
	Minor int `json:"minor"`
	Micro int `json:"micro"`
	// Package is the distribution's build string, for example
	// "Debian 1:7.2+dfsg-7+deb12u18+b3"; it may be empty.
	Package string `json:"-"`
}

// String formats the version as "major.minor.micro".
func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro)
}

// AtLeast reports whether v is major.minor or newer.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

// Event is one asynchronous QMP event.
type Event struct {
	// Name is the event name, for example "SHUTDOWN" or "STOP".
	Name string
	// Data is the event's data member; nil when the event has none.
	Data json.RawMessage
	// Time is QEMU's timestamp of the event.
	Time time.Time
}

// Error is an error reply to a command.
type Error struct {
	// Command is the command that failed.
	Command string
	// Class is QMP's error class, for example "GenericError" or
	// "CommandNotFound".
	Class string
	// Desc is QEMU's human-readable description.
	Desc string
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Options configures a Client.
type Options struct {
	// OnEvent receives every asynchronous event, in order, on the
	// client's reader goroutine. It must not block and must not call the
	// client, because replies are read by that same goroutine. Nil
	// discards events.
	OnEvent func(Event)
}

// Client is a QMP connection after the capabilities negotiation. It is
// safe for concurrent use; QEMU runs commands one at a time in the order
// they arrive.
type Client struct {
	conn    *net.UnixConn
	onEvent func(Event)
	version Version
	caps    []string
	done    chan struct{}

	// writeMu keeps each command, with its descriptor, one write.
	writeMu   sync.Mutex
	closeOnce sync.Once
	closeErr  error

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan reply
	err     error // cause of the connection's end, set once before done closes
}

type reply struct {
	ret json.RawMessage
	err *errorBody
}

// message is any line QEMU sends: the greeting, a reply or an event.
type message struct {
	Greeting *struct {
		Version struct {
			QEMU    Version `json:"qemu"`
			Package string  `json:"package"`
		} `json:"version"`
		Capabilities []string `json:"capabilities"`
	} `json:"QMP"`
	Return    json.RawMessage `json:"return"`
	Error     *errorBody      `json:"error"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
	ID json.RawMessage `json:"id"`
}

type errorBody struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        uint64 `json:"id"`
}

// Dial connects to the QMP socket at path and completes the handshake.
// ctx bounds the connect and the handshake only.
func Dial(ctx context.Context, path string, opts Options) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to qmp socket %s: %w", path, err)
	}
	c, err := NewClient(ctx, conn.(*net.UnixConn), opts)
	if err != nil {
		return nil, fmt.Errorf("qmp handshake on %s: %w", path, err)
	}
	return c, nil
}

// NewClient reads the greeting from conn, sends qmp_capabilities and
// starts reading replies and events. ctx bounds the handshake only. The
// client owns conn from then on, also when NewClient fails.
func NewClient(ctx context.Context, conn *net.UnixConn, opts Options) (*Client, error) {
	c := &Client{
		conn:    conn,
		onEvent: opts.OnEvent,
		done:    make(chan struct{}),
		pending: make(map[uint64]chan reply),
	}
	dec := json.NewDecoder(conn)

	if err := c.greet(ctx, dec); err != nil {
		conn.Close()
		return nil, err
	}

	go c.readLoop(dec)

	if _, err := c.Execute(ctx, "qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// greet reads the greeting until ctx ends. Only ctx's end interrupts the
// read (by moving the read deadline into the past), so a failure caused by
// it always reports ctx's error.
func (c *Client) greet(ctx context.Context, dec *json.Decoder) error {
	stop := context.AfterFunc(ctx, func() {
		c.conn.SetReadDeadline(time.Unix(1, 0))
	})
	defer stop()

	var m message
	if err := dec.Decode(&m); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("read greeting: %w", ctx.Err())
		}
		return fmt.Errorf("read greeting: %w", err)
	}
	if m.Greeting == nil {
		return fmt.Errorf("read greeting: first message is not a QMP greeting")
	}

	c.version = m.Greeting.Version.QEMU
	c.version.Package = m.Greeting.Version.Package
	c.caps = m.Greeting.Capabilities

	if !stop() {
		// ctx ended while decoding succeeded; the deadline is already in
		// the past, so report the cancellation now.
		return fmt.Errorf("read greeting: %w", ctx.Err())
	}
	return c.conn.SetReadDeadline(time.Time{})
}

// Version returns the QEMU version from the greeting.
func (c *Client) Version() Version { return c.version }

// Capabilities returns the capabilities listed in the greeting.
func (c *Client) Capabilities() []string { return append([]string(nil), c.caps...) }

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Execute runs command with args (nil for none; anything encoding/json
// encodes as an object) and returns its "return" member. A QMP error reply
// is returned as *Error. When ctx ends first, Execute returns ctx's error,
// but QEMU may still run the command.
func (c *Client) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	return c.execute(ctx, command, args, nil)
}

// ExecuteWithFile runs command like Execute and sends f's descriptor with
// it through SCM_RIGHTS. QEMU keeps a received descriptor only for a
// command that takes one, such as getfd or add-fd. f stays open; the
// caller closes it.
func (c *Client) ExecuteWithFile(ctx context.Context, command string, args any, f *os.File) (json.RawMessage, error) {
	if f == nil {
		return nil, fmt.Errorf("qmp %s: nil file", command)
	}
	return c.execute(ctx, command, args, f)
}

func (c *Client) execute(ctx context.Context, command string, args any, f *os.File) (json.RawMessage, error) {
	id, ch, err := c.register()
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	defer c.unregister(id)

	line, err := json.Marshal(request{Execute: command, Arguments: args, ID: id})
	if err != nil {
		return nil, fmt.Errorf("qmp %s: encode arguments: %w", command, err)
	}
	if err := c.write(ctx, append(line, '\n'), f); err != nil {
		return nil, fmt.Errorf("qmp %s: send: %w", command, err)
	}

	select {
	case r := <-ch:
		if r.err != nil {
			return nil, &Error{Command: command, Class: r.err.Class, Desc: r.err.Desc}
		}
		return r.ret, nil
	case <-c.done:
		return nil, fmt.Errorf("qmp %s: %w", command, c.endErr())
	case <-ctx.Done():
		return nil, fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}

func (c *Client) register() (uint64, chan reply, error) {
	c.mu.Lock()
	defer c.mu.Unlock()

	if c.err != nil {
		return 0, nil, c.err
	}
	c.nextID++
	ch := make(chan reply, 1)
	c.pending[c.nextID] = ch
	return c.nextID, ch, nil
}

func (c *Client) unregister(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// write sends one command line, with f's descriptor attached when f is
// not nil. The rights ride on the same sendmsg as the command's bytes, so
// QEMU has the descriptor queued when it parses the command.
func (c *Client) write(ctx context.Context, line []byte, f *os.File) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()

	deadline, _ := ctx.Deadline()
	if err := c.conn.SetWriteDeadline(deadline); err != nil {
		return err
	}
	if f == nil {
		_, err := c.conn.Write(line)
		return err
	}

	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	err = raw.Control(func(fd uintptr) {
		n, _, err := c.conn.WriteMsgUnix(line, syscall.UnixRights(int(fd)), nil)
		if err == nil && n < len(line) {
			_, err = c.conn.Write(line[n:])
		}
		werr = err
	})
	if err != nil {
		return err
	}
	return werr
}

func (c *Client) readLoop(dec *json.Decoder) {
	for {
		var m message
		if err := dec.Decode(&m); err != nil {
			c.shutdown(fmt.Errorf("%w: %w", ErrClosed, err))
			return
		}
		if m.Event != "" {
			c.deliverEvent(m)
			continue
		}
		if m.Return == nil && m.Error == nil {
			continue // neither reply nor event; nothing waits for it
		}
		c.deliverReply(m)
	}
}

func (c *Client) deliverEvent(m message) {
	if c.onEvent == nil {
		return
	}
	ev := Event{Name: m.Event, Data: m.Data}
	if m.Timestamp != nil {
		ev.Time = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
	}
	c.onEvent(ev)
}

// deliverReply hands a reply to the command with its id. QEMU copies the
// id from the request, except in an error reply to a line it could not
// parse, which goes to the oldest waiting command.
func (c *Client) deliverReply(m message) {
	r := reply{ret: m.Return, err: m.Error}

	c.mu.Lock()
	defer c.mu.Unlock()

	id, err := strconv.ParseUint(string(m.ID), 10, 64)
	if err != nil {
		id = 0
		for pid := range c.pending {
			if id == 0 || pid < id {
				id = pid
			}
		}
	}
	if ch, ok := c.pending[id]; ok {
		ch <- r
		delete(c.pending, id)
	}
}

func (c *Client) shutdown(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()

	if c.err != nil {
		return
	}
	c.err = err
	close(c.done)
}

func (c *Client) endErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the connection and fails waiting commands with ErrClosed. It
// is idempotent.
func (c *Client) Close() error {
	c.shutdown(ErrClosed)
	c.closeOnce.Do(func() { c.closeErr = c.conn.Close() })
	return c.closeErr
}
