package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

// defaultHost is the daemon's Unix socket when neither --host nor
// HEARTH_HOST names one; it is the default [grpc].unix_socket.
const defaultHost = "unix:///run/hearth/hearth.sock"

// probeTimeout bounds the connection attempt that decides whether a
// daemon is listening at all.
const probeTimeout = 2 * time.Second

// errNoDaemon is wrapped by connect when nothing listens at the address.
var errNoDaemon = errors.New("no hearth daemon is listening")

// hostAddress is a parsed --host value.
type hostAddress struct {
	network string // "unix" or "tcp"
	address string // socket path or host:port
}

func (a hostAddress) String() string {
	if a.network == "unix" {
		return "unix://" + a.address
	}
	return "tcp://" + a.address
}

// parseHost accepts unix:///path, a bare absolute path, tcp://host:port
// or host:port.
func parseHost(s string) (hostAddress, error) {
	switch {
	case strings.HasPrefix(s, "unix://"):
		s = strings.TrimPrefix(s, "unix://")
		if !strings.HasPrefix(s, "/") {
			return hostAddress{}, fmt.Errorf("invalid host %q: a unix:// address needs an absolute socket path, such as %s",
				"unix://"+s, defaultHost)
		}
		return hostAddress{network: "unix", address: s}, nil
	case strings.HasPrefix(s, "/"):
		return hostAddress{network: "unix", address: s}, nil
	case strings.HasPrefix(s, "tcp://"):
		s = strings.TrimPrefix(s, "tcp://")
	case strings.Contains(s, "://"):
		return hostAddress{}, fmt.Errorf("invalid host %q: use unix:///path/to/socket or tcp://host:port", s)
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		return hostAddress{}, fmt.Errorf("invalid host %q: use unix:///path/to/socket or tcp://host:port", s)
	}
	return hostAddress{network: "tcp", address: s}, nil
}

// host returns the daemon address of the flags and environment, and
// whether the user chose it rather than taking the default.
func (g *globalOptions) host() (addr hostAddress, explicit bool, err error) {
	raw, explicit := g.hostFlag, true
	if raw == "" {
		raw = strings.TrimSpace(os.Getenv("HEARTH_HOST"))
	}
	if raw == "" {
		raw, explicit = defaultHost, false
	}
	addr, err = parseHost(raw)
	return addr, explicit, err
}

// daemonClient is a connection to the hearth daemon with a stub per
// service.
type daemonClient struct {
	addr     hostAddress
	conn     *grpc.ClientConn
	sandbox  sandboxv1.SandboxServiceClient
	snapshot sandboxv1.SandboxSnapshotServiceClient
	control  sandboxv1.SandboxControlServiceClient
}

func (c *daemonClient) Close() error { return c.conn.Close() }

// connect returns a client of the daemon that --host, HEARTH_HOST or the
// default socket names. It first checks that something accepts
// connections there, so that a missing daemon is reported at once and as
// errNoDaemon rather than as the first call's UNAVAILABLE.
func (g *globalOptions) connect(ctx context.Context) (*daemonClient, error) {
	addr, _, err := g.host()
	if err != nil {
		return nil, err
	}
	return dial(ctx, addr, g)
}

func dial(ctx context.Context, addr hostAddress, g *globalOptions) (*daemonClient, error) {
	if err := probe(ctx, addr); err != nil {
		return nil, err
	}
	opts, err := g.transportOptions(addr)
	if err != nil {
		return nil, err
	}
	target := "unix://" + addr.address
	if addr.network == "tcp" {
		target = "passthrough:///" + addr.address
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to the hearth daemon at %s: %w", addr, err)
	}
	return &daemonClient{
		addr:     addr,
		conn:     conn,
		sandbox:  sandboxv1.NewSandboxServiceClient(conn),
		snapshot: sandboxv1.NewSandboxSnapshotServiceClient(conn),
		control:  sandboxv1.NewSandboxControlServiceClient(conn),
	}, nil
}

// probe opens and closes one connection to addr.
func probe(ctx context.Context, addr hostAddress) error {
	d := net.Dialer{Timeout: probeTimeout}
	conn, err := d.DialContext(ctx, addr.network, addr.address)
	if err == nil {
		return conn.Close()
	}
	switch {
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w at %s; start one with `hearth serve`, or point --host or HEARTH_HOST at a running one",
			errNoDaemon, addr)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("connect to the hearth daemon at %s: permission denied; run as root or as a member of the socket's group ([grpc].socket_group)",
			addr)
	}
	return fmt.Errorf("connect to the hearth daemon at %s: %w", addr, err)
}

// transportOptions returns the credentials for addr: none on a Unix
// socket, TLS with the --tls-ca certificate and a bearer token on TCP.
func (g *globalOptions) transportOptions(addr hostAddress) ([]grpc.DialOption, error) {
	if addr.network == "unix" {
		return []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, nil
	}
	if g.tlsCA == "" {
		return nil, fmt.Errorf("connecting to %s over TCP needs the daemon's CA certificate: pass --tls-ca FILE", addr)
	}
	creds, err := credentials.NewClientTLSFromFile(g.tlsCA, "")
	if err != nil {
		return nil, fmt.Errorf("load --tls-ca %s: %w", g.tlsCA, err)
	}
	token, err := g.token()
	if err != nil {
		return nil, err
	}
	return []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithPerRPCCredentials(bearerToken(token)),
	}, nil
}

// token returns the bearer token from --token-file, else from the
// environment variable HEARTH_TOKEN.
func (g *globalOptions) token() (string, error) {
	if g.tokenFile != "" {
		data, err := os.ReadFile(g.tokenFile)
		if err != nil {
			return "", fmt.Errorf("read --token-file: %w", err)
		}
		if token := strings.TrimSpace(string(data)); token != "" {
			return token, nil
		}
		return "", fmt.Errorf("--token-file %s is empty; it must contain the daemon's [grpc].token_file token", g.tokenFile)
	}
	if token := strings.TrimSpace(os.Getenv("HEARTH_TOKEN")); token != "" {
		return token, nil
	}
	return "", errors.New("connecting over TCP needs the daemon's bearer token: pass --token-file FILE or set HEARTH_TOKEN")
}

// bearerToken sends "authorization: Bearer <token>" with every call. It
// refuses to travel without TLS, so the token is never sent in clear.
type bearerToken string

func (t bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (bearerToken) RequireTransportSecurity() bool { return true }

// rpcError is a failed call of the daemon, reworded for a person.
type rpcError struct {
	code codes.Code
	msg  string
}

func (e *rpcError) Error() string { return e.msg }

// fromRPC turns a gRPC status into a plain message. That is the
// daemon's own message, with a hint where the code alone tells what to
// do. Errors that are no status pass unchanged.
func fromRPC(err error) error {
	st, ok := status.FromError(err)
	if err == nil || !ok {
		return err
	}
	msg := st.Message()
	switch st.Code() {
	case codes.Unavailable:
		msg = "the hearth daemon is unavailable: " + msg
	case codes.DeadlineExceeded:
		msg = "timed out: " + msg
	case codes.Canceled:
		msg = "cancelled: " + msg
	case codes.Unauthenticated:
		msg = "the daemon rejected the credentials: " + msg
	case codes.PermissionDenied:
		msg = "permission denied: " + msg
	case codes.Unimplemented:
		msg = "the daemon does not support this call (" + msg + "); upgrade it to the version of this hearth"
	case codes.Internal, codes.Unknown, codes.DataLoss:
		msg = "the hearth daemon failed: " + msg
	}
	return &rpcError{code: st.Code(), msg: msg}
}
