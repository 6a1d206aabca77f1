package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

type execOptions struct {
	interactive bool
	tty         bool
	env         []string
	workdir     string
	user        string
	timeout     time.Duration
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
terminal runs in raw mode and follows window size changes.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, argv := args[0], args[1:]
			if argv[0] == "--" {
				argv = argv[1:]
			}
			if len(argv) == 0 {
				return errors.New("no command given: use hearth exec ID -- CMD [ARG...]")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
			defer stop()
			cmd.SetContext(ctx)
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
		return exitStatus(runRemote(ctx, c, req, std.out, std.errOut))
	}
	init := &sandboxv1.ExecRequest{
		Id: id, Cmd: argv, Env: env, WorkingDir: o.workdir, User: o.user, Tty: o.tty, TimeoutSeconds: timeout,
	}
	return exitStatus(execInteractive(ctx, c, init, o.interactive, std))
}

// exitStatus turns a command's exit code into the error Main exits with.
func exitStatus(code int32, err error) error {
	if err != nil {
		return err
	}
	if code != 0 {
		return exitCodeError{code: int(code)}
	}
	return nil
}

// runRemote runs req with the Run call and copies its output. It
// returns the command's exit code; an error means hearth failed, not the
// command.
func runRemote(ctx context.Context, c *daemonClient, req *sandboxv1.RunRequest, stdout, stderr io.Writer) (int32, error) {
	stream, err := c.sandbox.Run(ctx, req)
	if err != nil {
		return 0, fromRPC(err)
	}
	return copyOutput(stream, stdout, stderr)
}

// outputMessage is the interface RunOutput and ExecOutput share.
type outputMessage interface {
	GetStream() string
	GetData() []byte
	GetExitCode() int32
	GetDone() bool
}

// copyOutput writes a command's output messages to stdout and stderr
// until the one marked done, and returns its exit code.
func copyOutput[M outputMessage](stream interface{ Recv() (M, error) }, stdout, stderr io.Writer) (int32, error) {
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return 0, errors.New("the daemon ended the command's output without an exit code")
		}
		if err != nil {
			return 0, fromRPC(err)
		}
		if msg.GetDone() {
			return msg.GetExitCode(), nil
		}
		w := stdout
		if msg.GetStream() == "stderr" {
			w = stderr
		}
		if _, err := w.Write(msg.GetData()); err != nil {
			return 0, fmt.Errorf("write command output: %w", err)
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
func execInteractive(ctx context.Context, c *daemonClient, init *sandboxv1.ExecRequest, forwardStdin bool, std stdio) (int32, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	term := openTerminal(init.GetTty() && forwardStdin, std)
	if term != nil {
		init.TtySize = term.size()
		restore, err := term.makeRaw()
		if err != nil {
			return 0, err
		}
		defer restore()
	}

	raw, err := c.sandbox.Exec(ctx)
	if err != nil {
		return 0, fromRPC(err)
	}
	stream := &execStream{BidiStreamingClient: raw}
	if err := stream.send(&sandboxv1.ExecInput{Payload: &sandboxv1.ExecInput_Init{Init: init}}); err != nil {
		return 0, execSendError(stream, err)
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
		return 0, execSendError(stream, err)
	}
	return copyOutput(raw, std.out, std.errOut)
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
