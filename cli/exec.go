package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

type execOptions struct {
	interactive bool
	tty         bool
	env         []string
	workdir     string
	user        string
	timeout     time.Duration
	// signals delivers the signals to send on to the command; nil
	// forwards none.
	signals <-chan os.Signal
}

func newExecCommand(g *globalOptions) *cobra.Command {
	var o execOptions
	cmd := &cobra.Command{
		Use:   "exec [flags] ID -- CMD [ARG...]",
		Short: "Run a command in a sandbox and exit with its exit code",
		Long: `Run a command in a sandbox with its output streamed to this terminal, and
exit with the command's exit code. Errors of hearth itself exit with 125.

-i forwards this process's standard input to the command, -t gives the
command a terminal; with both, and standard input a terminal, the local
terminal runs in raw mode and follows window size changes, and Ctrl-C
reaches the command through its terminal.

SIGINT and SIGTERM received by hearth are sent on to the command, which
decides whether to end; SIGHUP ends the command. A command that a signal
or --timeout ended exits with 128+N or 124, and hearth names the reason
on standard error.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, argv := args[0], args[1:]
			if argv[0] == "--" {
				argv = argv[1:]
			}
			if len(argv) == 0 {
				return errors.New("no command given: use hearth exec ID -- CMD [ARG...]")
			}
			// SIGINT and SIGTERM go to the command; only a hangup
			// ends the call, which kills the command.
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGHUP)
			defer stop()
			cmd.SetContext(ctx)
			forward := make(chan os.Signal, 4)
			signal.Notify(forward, os.Interrupt, syscall.SIGTERM)
			defer signal.Stop(forward)
			o.signals = forward
			return withClient(cmd, g, func(ctx context.Context, c *daemonClient) error {
				return execIn(ctx, c, id, argv, o, stdioOf(cmd))
			})
		},
	}
	// Flags after the ID belong to the command, as in `exec ID ls -l`.
	cmd.Flags().SetInterspersed(false)
	f := cmd.Flags()
	f.BoolVarP(&o.interactive, "interactive", "i", false, "forward standard input to the command")
	f.BoolVarP(&o.tty, "tty", "t", false, "give the command a terminal")
	f.StringArrayVarP(&o.env, "env", "e", nil, "environment variable KEY=VALUE for the command (repeatable)")
	f.StringVarP(&o.workdir, "workdir", "w", "", "working directory of the command in the guest")
	f.StringVarP(&o.user, "user", "u", "", "user to run the command as: name, uid or uid:gid")
	f.DurationVar(&o.timeout, "timeout", 0, "kill the command after this long, in whole seconds, e.g. 30s (default none)")
	return cmd
}

// stdio is the standard input and output of a verb.
type stdio struct {
	in          io.Reader
	out, errOut io.Writer
}

func stdioOf(cmd *cobra.Command) stdio {
	return stdio{in: cmd.InOrStdin(), out: cmd.OutOrStdout(), errOut: cmd.ErrOrStderr()}
}

func execIn(ctx context.Context, c *daemonClient, id string, argv []string, o execOptions, std stdio) error {
	env, err := parseEnv(o.env)
	if err != nil {
		return err
	}
	timeout, err := wholeSeconds("--timeout", o.timeout)
	if err != nil {
		return err
	}
	if !o.interactive && !o.tty {
		req := &sandboxv1.RunRequest{
			Id: id, Cmd: argv, Env: env, WorkingDir: o.workdir, User: o.user, TimeoutSeconds: timeout,
		}
		exit, err := runRemoteForwarding(ctx, c, req, o.signals, std.out, std.errOut)
		return exitStatus(exit, err, std.errOut)
	}
	init := &sandboxv1.ExecRequest{
		Id: id, Cmd: argv, Env: env, WorkingDir: o.workdir, User: o.user, Tty: o.tty, TimeoutSeconds: timeout,
	}
	exit, err := execInteractive(ctx, c, init, o.interactive, o.signals, std)
	return exitStatus(exit, err, std.errOut)
}

// commandExit is the end of a command as the last output message reports
// it.
type commandExit struct {
	code     int32
	signal   string
	reason   string
	timedOut bool
}

// describe words an exit that was not a normal one for standard error,
// or returns "" for a normal exit.
func (e commandExit) describe() string {
	switch {
	case e.timedOut:
		return fmt.Sprintf("the command timed out and was killed (exit code %d)", e.code)
	case e.signal != "":
		return fmt.Sprintf("the command was killed by %s (exit code %d)", e.signal, e.code)
	case e.reason != "" && e.reason != "exited":
		return fmt.Sprintf("the command ended: %s (exit code %d)", e.reason, e.code)
	}
	return ""
}

// exitStatus turns how a command ended into the error Main exits with,
// and names the reason on stderr when it was not a normal exit.
func exitStatus(exit commandExit, err error, stderr io.Writer) error {
	if err != nil {
		return err
	}
	if msg := exit.describe(); msg != "" {
		fmt.Fprintln(stderr, "hearth:", msg)
	}
	if exit.code != 0 {
		return exitCodeError{code: int(exit.code)}
	}
	return nil
}

// runRemote runs req with the Run call and copies its output. It
// returns how the command ended; an error means hearth failed, not the
// command.
func runRemote(ctx context.Context, c *daemonClient, req *sandboxv1.RunRequest, stdout, stderr io.Writer) (commandExit, error) {
	stream, err := c.sandbox.Run(ctx, req)
	if err != nil {
		return commandExit{}, fromRPC(err)
	}
	return copyOutput(stream, stdout, stderr, nil)
}

// announceWait bounds how long a signal waits for the daemon to announce
// the workload it is meant for; the announcement follows the call's start
// by one message, so a signal that arrives at once still reaches the
// command.
const announceWait = 2 * time.Second

// runRemoteForwarding is runRemote that also sends the signals from
// signals to the command, by the workload ID the daemon announces. A
// signal with no announcement within announceWait cancels the call, which
// kills the command.
func runRemoteForwarding(ctx context.Context, c *daemonClient, req *sandboxv1.RunRequest, signals <-chan os.Signal,
	stdout, stderr io.Writer) (commandExit, error) {
	if signals == nil {
		return runRemote(ctx, c, req, stdout, stderr)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req.AnnounceWorkload = true
	stream, err := c.sandbox.Run(ctx, req)
	if err != nil {
		return commandExit{}, fromRPC(err)
	}

	workload := make(chan string, 1)
	done := make(chan struct{})
	defer close(done)
	control := sandboxv1.NewSandboxControlServiceClient(c.conn)
	go forwardSignals(signals, done, cancel, func(sig string) error {
		select {
		case id := <-workload:
			workload <- id
			_, err := control.Signal(ctx, &sandboxv1.SignalRequest{Id: req.GetId(), WorkloadId: id, Signal: sig})
			if status.Code(err) == codes.NotFound {
				// The command has just ended, and its exit is on the way.
				return nil
			}
			return err
		case <-time.After(announceWait):
			return errors.New("the workload ID is not known yet")
		}
	})
	return copyOutput(stream, stdout, stderr, func(id string) { workload <- id })
}

// forwardSignals calls send with the name of each signal from signals
// until done is closed. When a signal cannot be sent, it calls cancel,
// which ends the call and so the command.
func forwardSignals(signals <-chan os.Signal, done <-chan struct{}, cancel func(), send func(string) error) {
	for {
		select {
		case sig := <-signals:
			name := signalName(sig)
			if err := send(name); err != nil {
				slog.Debug("forward signal failed; ending the command", "signal", name, "err", err)
				cancel()
			}
		case <-done:
			return
		}
	}
}

// signalName returns the name the API takes for sig.
func signalName(sig os.Signal) string {
	switch sig {
	case os.Interrupt:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGHUP:
		return "SIGHUP"
	case syscall.SIGQUIT:
		return "SIGQUIT"
	}
	return sig.String()
}

// outputMessage is the interface RunOutput and ExecOutput share.
type outputMessage interface {
	GetStream() string
	GetData() []byte
	GetExitCode() int32
	GetDone() bool
	GetWorkloadId() string
	GetSignal() string
	GetReason() string
	GetTimedOut() bool
}

// copyOutput writes a command's output messages to stdout and stderr
// until the one marked done, and returns how the command ended. It calls
// onWorkload, when not nil, with an announced workload ID.
func copyOutput[M outputMessage](stream interface{ Recv() (M, error) }, stdout, stderr io.Writer,
	onWorkload func(id string)) (commandExit, error) {
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return commandExit{}, errors.New("the daemon ended the command's output without an exit code")
		}
		if err != nil {
			return commandExit{}, fromRPC(err)
		}
		if msg.GetDone() {
			return commandExit{
				code: msg.GetExitCode(), signal: msg.GetSignal(), reason: msg.GetReason(), timedOut: msg.GetTimedOut(),
			}, nil
		}
		if msg.GetWorkloadId() != "" {
			if onWorkload != nil {
				onWorkload(msg.GetWorkloadId())
			}
			continue
		}
		w := stdout
		if msg.GetStream() == "stderr" {
			w = stderr
		}
		if _, err := w.Write(msg.GetData()); err != nil {
			return commandExit{}, fmt.Errorf("write command output: %w", err)
		}
	}
}

// execStream serialises the sends of an Exec call, which the stdin and
// window size goroutines share.
type execStream struct {
	grpc.BidiStreamingClient[sandboxv1.ExecInput, sandboxv1.ExecOutput]
	mu sync.Mutex
}

func (s *execStream) send(msg *sandboxv1.ExecInput) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Send(msg)
}

func (s *execStream) closeSend() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.CloseSend()
}

// execInteractive runs init with the Exec call. With a terminal requested
// and stdin a terminal, the local terminal is in raw mode for the whole
// call and restored on every return, and window size changes are sent as
// resizes.
func execInteractive(ctx context.Context, c *daemonClient, init *sandboxv1.ExecRequest, forwardStdin bool,
	signals <-chan os.Signal, std stdio) (commandExit, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	term := openTerminal(init.GetTty() && forwardStdin, std)
	if term != nil {
		init.TtySize = term.size()
		restore, err := term.makeRaw()
		if err != nil {
			return commandExit{}, err
		}
		defer restore()
	}

	raw, err := c.sandbox.Exec(ctx)
	if err != nil {
		return commandExit{}, fromRPC(err)
	}
	stream := &execStream{BidiStreamingClient: raw}
	if err := stream.send(&sandboxv1.ExecInput{Payload: &sandboxv1.ExecInput_Init{Init: init}}); err != nil {
		return commandExit{}, execSendError(stream, err)
	}
	if signals != nil {
		// In raw mode Ctrl-C is a byte of stdin, so signals arrive here
		// only from elsewhere (kill, or a terminal not in raw mode).
		done := make(chan struct{})
		defer close(done)
		go forwardSignals(signals, done, cancel, func(sig string) error {
			return stream.send(&sandboxv1.ExecInput{Payload: &sandboxv1.ExecInput_Signal{Signal: sig}})
		})
	}
	if term != nil {
		stopResize := term.watchResize(func(size *sandboxv1.TerminalSize) {
			_ = stream.send(&sandboxv1.ExecInput{Payload: &sandboxv1.ExecInput_Resize{Resize: size}})
		})
		defer stopResize()
	}
	if forwardStdin {
		// The goroutine may stay blocked in a read of stdin after the
		// command ended; the process exits soon after.
		go forwardInput(std.in, stream)
	} else if err := stream.closeSend(); err != nil {
		return commandExit{}, execSendError(stream, err)
	}
	return copyOutput(raw, std.out, std.errOut, nil)
}

// forwardInput sends r's bytes as stdin messages. At r's end it closes
// the sending side, which the command receives as the end of its input.
func forwardInput(r io.Reader, stream *execStream) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			data := append([]byte(nil), buf[:n]...)
			if stream.send(&sandboxv1.ExecInput{Payload: &sandboxv1.ExecInput_Stdin{Stdin: data}}) != nil {
				return
			}
		}
		if err != nil {
			_ = stream.closeSend()
			return
		}
	}
}

// execSendError returns the call's status when a send failed because the
// call ended: Send returns io.EOF then, and the reason comes from Recv.
func execSendError(stream *execStream, err error) error {
	if errors.Is(err, io.EOF) {
		if _, recvErr := stream.Recv(); recvErr != nil && !errors.Is(recvErr, io.EOF) {
			return fromRPC(recvErr)
		}
	}
	return fromRPC(err)
}
