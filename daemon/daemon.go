// Package daemon runs hearth as a service. It builds the sandbox manager
// from the configuration and serves the gRPC API of package server on a
// Unix socket, and optionally on TCP with TLS and a bearer token. On
// shutdown it removes every sandbox.
//
// Sandboxes do not survive a restart of the daemon: the manager keeps its
// records in memory, so a stop removes them all, and a daemon that was
// killed leaves VMs and directories that a new one does not adopt.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/hearthvm/hearth/config"
	"github.com/hearthvm/hearth/sandbox"
	"github.com/hearthvm/hearth/server"
)

// shutdownTimeout bounds the removal of all sandboxes and the wait for
// in-flight calls when the daemon stops.
const shutdownTimeout = 60 * time.Second

// Options configures a Daemon.
type Options struct {
	// Config is the validated configuration.
	Config config.Config
	// Manager, when set, is used instead of one built from Config by
	// NewManager. The daemon closes it on shutdown either way.
	Manager *sandbox.Manager
	// Logger receives the daemon's records. Nil means slog.Default().
	Logger *slog.Logger
}

// Daemon is a running API server.
type Daemon struct {
	cfg     config.Config
	log     *slog.Logger
	mgr     *sandbox.Manager
	api     *server.Server
	servers []*grpc.Server
	unix    net.Listener
	tcp     net.Listener
	// failed receives the first error of a Serve loop.
	failed chan error

	shutdownOnce sync.Once
	shutdownErr  error
}

// Start builds the daemon, listens and serves in the background. On error
// nothing is left listening.
func Start(opts Options) (_ *Daemon, err error) {
	cfg := opts.Config
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	for _, w := range cfg.Warnings() {
		log.Warn(w)
	}
	d := &Daemon{cfg: cfg, log: log, mgr: opts.Manager, failed: make(chan error, 2)}
	defer func() {
		if err != nil {
			d.closeListeners()
		}
	}()

	// TCP settings are checked before anything is built, so a refused
	// TCP configuration never starts a sandbox manager.
	var tcpServer *grpc.Server
	if cfg.GRPC.TCPAddr != "" {
		if tcpServer, err = d.newTCPServer(); err != nil {
			return nil, err
		}
	}
	if d.mgr == nil {
		if d.mgr, err = NewManager(cfg, log); err != nil {
			return nil, err
		}
	}
	d.api, err = server.New(server.Options{
		Manager:            d.mgr,
		MaxSandboxes:       int(cfg.Limits.MaxSandboxes),
		MaxConcurrentBoots: int(cfg.Limits.MaxConcurrentBoots),
		Logger:             log,
	})
	if err != nil {
		return nil, err
	}

	if err := d.listen(); err != nil {
		return nil, err
	}
	d.serve(d.newServer(), d.unix)
	if tcpServer != nil {
		d.api.Register(tcpServer)
		d.serve(tcpServer, d.tcp)
	}
	attrs := []any{"socket", cfg.GRPC.UnixSocket, "data_dir", cfg.Hearth.DataDir}
	if d.tcp != nil {
		attrs = append(attrs, "tcp", d.tcp.Addr().String())
	}
	log.Info("hearth daemon started", attrs...)
	return d, nil
}

// newServer returns a gRPC server with the API and error logging.
func (d *Daemon) newServer(extra ...grpc.ServerOption) *grpc.Server {
	unaryLog, streamLog := server.LogErrors(d.log)
	opts := append([]grpc.ServerOption{grpc.ChainUnaryInterceptor(unaryLog), grpc.ChainStreamInterceptor(streamLog)}, extra...)
	g := grpc.NewServer(opts...)
	d.api.Register(g)
	return g
}

// newTCPServer returns the TCP listener's gRPC server, with TLS and the
// token check ahead of the error logging. It registers no service yet.
func (d *Daemon) newTCPServer() (*grpc.Server, error) {
	g := d.cfg.GRPC
	if g.TLSCert == "" || g.TLSKey == "" || g.TokenFile == "" {
		return nil, fmt.Errorf("refusing [grpc].tcp_addr = %q without TLS and a bearer token: set tls_cert, tls_key and token_file",
			g.TCPAddr)
	}
	tlsConfig, err := loadTLS(g.TLSCert, g.TLSKey)
	if err != nil {
		return nil, err
	}
	auth, err := readToken(g.TokenFile)
	if err != nil {
		return nil, err
	}
	unaryLog, streamLog := server.LogErrors(d.log)
	return grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsConfig)),
		grpc.ChainUnaryInterceptor(unaryLog, auth.unary),
		grpc.ChainStreamInterceptor(streamLog, auth.stream),
	), nil
}

func (d *Daemon) listen() error {
	g := d.cfg.GRPC
	mode, err := config.ParseSocketMode(g.SocketMode)
	if err != nil {
		return fmt.Errorf("invalid [grpc].socket_mode = %q: %w", g.SocketMode, err)
	}
	if d.unix, err = listenUnix(g.UnixSocket, os.FileMode(mode), g.SocketGroup); err != nil {
		return err
	}
	if g.TCPAddr != "" {
		if d.tcp, err = net.Listen("tcp", g.TCPAddr); err != nil {
			return fmt.Errorf("listen on [grpc].tcp_addr %s: %w", g.TCPAddr, err)
		}
	}
	return nil
}

func (d *Daemon) serve(g *grpc.Server, lis net.Listener) {
	d.servers = append(d.servers, g)
	go func() {
		if err := g.Serve(lis); err != nil {
			d.failed <- fmt.Errorf("serve on %s: %w", lis.Addr(), err)
		}
	}()
}

func (d *Daemon) closeListeners() {
	for _, lis := range []net.Listener{d.unix, d.tcp} {
		if lis != nil {
			lis.Close()
		}
	}
}

// TCPAddr returns the TCP listener's address, or nil without one.
func (d *Daemon) TCPAddr() net.Addr {
	if d.tcp == nil {
		return nil
	}
	return d.tcp.Addr()
}

// Failed returns a channel that receives an error when a listener stops
// serving on its own.
func (d *Daemon) Failed() <-chan error { return d.failed }

// Shutdown stops the daemon: new sandboxes are rejected and Events
// streams end, every sandbox is removed (which ends its Run and Exec
// calls), the remaining calls get until ctx ends to finish, and the
// socket is removed. It may be called more than once; later calls return
// the first result.
func (d *Daemon) Shutdown(ctx context.Context) error {
	d.shutdownOnce.Do(func() { d.shutdownErr = d.shutdown(ctx) })
	return d.shutdownErr
}

func (d *Daemon) shutdown(ctx context.Context) error {
	count := len(d.mgr.List(sandbox.ListFilter{}))
	d.log.Info("hearth daemon stopping; removing every sandbox", "sandboxes", count)
	d.api.BeginShutdown()
	err := d.mgr.Close(ctx)
	if err != nil {
		err = fmt.Errorf("remove sandboxes: %w", err)
	}

	var wg sync.WaitGroup
	for _, g := range d.servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stopped := make(chan struct{})
			go func() {
				g.GracefulStop()
				close(stopped)
			}()
			select {
			case <-stopped:
			case <-ctx.Done():
				g.Stop()
			}
		}()
	}
	wg.Wait()
	// Serve closes the listeners, and a closed Unix listener from
	// net.Listen unlinks its socket; this covers a daemon that failed
	// before serving.
	d.closeListeners()
	d.log.Info("hearth daemon stopped", "err", err)
	return err
}

// Run starts the daemon and serves until ctx ends or a listener fails,
// then shuts down within shutdownTimeout.
func Run(ctx context.Context, opts Options) error {
	d, err := Start(opts)
	if err != nil {
		return err
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-d.Failed():
	}
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	return errors.Join(serveErr, d.Shutdown(stopCtx))
}
