// Command hearth-agent is the agent inside each hearth guest.
//
// Started by the kernel as PID 1 with hearth_init=1 in its environment,
// it performs the guest's init duties and serves the agent ports over the
// transport named on the kernel command line. Started any other way it
// only serves, on the hybrid vsock Unix socket given by --listen-hybrid,
// and changes nothing on the machine it runs on.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/hearthvm/hearth/agent"
	"github.com/hearthvm/hearth/agentlink"
	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/guestinit"
)

func main() {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))

	if os.Getpid() == 1 && os.Getenv("hearth_init") == "1" {
		runGuest()
		return
	}
	os.Exit(serveOnly(os.Args[1:]))
}

// runGuest runs the agent as a guest's init. It never returns: every
// failure ends in guestinit.Shutdown, which reboots the guest, because
// PID 1 exiting would make the kernel panic.
func runGuest() {
	defer func() {
		if r := recover(); r != nil {
			slog.Error("hearth-agent panicked; rebooting the guest", "panic", r, "stack", string(debug.Stack()))
			guestinit.Shutdown()
		}
	}()

	ctx := context.Background()
	cfg, err := guestinit.Init(ctx)
	if err != nil {
		slog.Error("guest init failed; rebooting the guest", "err", err)
		guestinit.Shutdown()
		return
	}

	srv := agent.NewServer(agent.Options{
		AllowClockSet:    true,
		Shutdown:         guestinit.Shutdown,
		ConfigureNetwork: agent.ConfigureInterface,
	})
	err = serveGuest(ctx, cfg, srv.HandleConn)
	slog.Error("agent transport stopped; rebooting the guest", "transport", cfg.Transport, "err", err)
	guestinit.Shutdown()
}

func serveGuest(ctx context.Context, cfg guestinit.Config, h agentlink.Handler) error {
	slog.Info("hearth-agent serving", "transport", cfg.Transport, "serial_port", cfg.SerialPort)
	switch cfg.Transport {
	case guestinit.TransportSerial:
		return agentlink.ServeSerial(ctx, cfg.SerialPort, h)
	case guestinit.TransportVsock:
		ports := []uint32{agentproto.PortExec, agentproto.PortFile, agentproto.PortControl}
		return agentlink.ServeVsock(ctx, ports, h)
	default:
		return fmt.Errorf("unknown transport %q: set hearth.transport=serial or hearth.transport=vsock", cfg.Transport)
	}
}

// serveOnly serves the agent ports without any init duty and returns the
// process exit code. SHUTDOWN, SIGINT and SIGTERM end it.
func serveOnly(args []string) int {
	flags := flag.NewFlagSet("hearth-agent", flag.ContinueOnError)
	listenHybrid := flags.String("listen-hybrid", "",
		"serve the agent ports on a hybrid vsock Unix socket created at `path`, which must not exist yet")
	parentFD := flags.Int("parent-fd", -1,
		"exit when the inherited file descriptor `fd` (the read end of a pipe the parent keeps open) reaches end of file")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if *listenHybrid == "" || flags.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "hearth-agent: outside a guest, --listen-hybrid PATH is required and no arguments are accepted")
		flags.Usage()
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	if *parentFD >= 0 {
		// A parent-death signal does not reliably reach an agent that is
		// PID 1 of its own PID namespace, so a test double also hands it
		// a pipe: when the parent dies, its end closes and the read
		// below returns.
		go func() {
			f := os.NewFile(uintptr(*parentFD), "parent")
			_, _ = io.Copy(io.Discard, f)
			slog.Info("hearth-agent: parent exited; stopping")
			cancel()
		}()
	}
	srv := agent.NewServer(agent.Options{Shutdown: cancel})
	slog.Info("hearth-agent serving without init duties", "socket", *listenHybrid, "pid", os.Getpid())
	err := agentlink.ServeHybrid(ctx, *listenHybrid, srv.HandleConn)
	if err != nil && !errors.Is(err, context.Canceled) {
		slog.Error("hearth-agent stopped", "err", err)
		return 1
	}
	slog.Info("hearth-agent stopped")
	return 0
}
