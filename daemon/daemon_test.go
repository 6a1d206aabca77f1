package daemon_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/config"
	"github.com/hearthvm/hearth/daemon"
	"github.com/hearthvm/hearth/sandbox"
	"github.com/hearthvm/hearth/server/servertest"
)

// testConfig returns a configuration whose socket lies in a fresh
// temporary directory. Unix socket paths are limited to 107 bytes, so the
// directory is made under /tmp rather than under t.TempDir().
func testConfig(t *testing.T) config.Config {
	t.Helper()
	dir, err := os.MkdirTemp("", "hearthd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := config.Default()
	cfg.Hearth.DataDir = filepath.Join(dir, "data")
	cfg.GRPC.UnixSocket = filepath.Join(dir, "run", "hearth.sock")
	return cfg
}

// start starts a daemon on a fake manager and shuts it down at the end of
// the test.
func start(t *testing.T, cfg config.Config) (*daemon.Daemon, *sandbox.Manager) {
	t.Helper()
	mgr := servertest.NewManager(t, nil)
	d, err := daemon.Start(daemon.Options{Config: cfg, Manager: mgr, Logger: servertest.QuietLogger})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), servertest.Deadline)
		defer cancel()
		if err := d.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return d, mgr
}

func dialUnix(t *testing.T, path string) sandboxv1.SandboxServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { conn.Close() })
	return sandboxv1.NewSandboxServiceClient(conn)
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), servertest.Deadline)
	t.Cleanup(cancel)
	return ctx
}

func TestUnixSocketServes(t *testing.T) {
	cfg := testConfig(t)
	start(t, cfg)
	client := dialUnix(t, cfg.GRPC.UnixSocket)
	if _, err := client.List(testContext(t), &sandboxv1.ListSandboxesRequest{}); err != nil {
		t.Fatalf("list over the Unix socket: %v", err)
	}
	fi, err := os.Stat(cfg.GRPC.UnixSocket)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o660 {
		t.Errorf("socket mode: got %o, want 660", got)
	}
}

func TestSocketGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changing a socket's group to an arbitrary gid needs root; run the test as root")
	}
	cfg := testConfig(t)
	cfg.GRPC.SocketGroup = "4242"
	cfg.GRPC.SocketMode = "0640"
	start(t, cfg)
	fi, err := os.Stat(cfg.GRPC.UnixSocket)
	if err != nil {
		t.Fatal(err)
	}
	if gid := fi.Sys().(*syscall.Stat_t).Gid; gid != 4242 {
		t.Errorf("socket group: got %d, want 4242", gid)
	}
	if got := fi.Mode().Perm(); got != 0o640 {
		t.Errorf("socket mode: got %o, want 640", got)
	}
}

func TestUnknownSocketGroup(t *testing.T) {
	cfg := testConfig(t)
	cfg.GRPC.SocketGroup = "no-such-group-hearth"
	mgr := servertest.NewManager(t, nil)
	_, err := daemon.Start(daemon.Options{Config: cfg, Manager: mgr, Logger: servertest.QuietLogger})
	if err == nil || !strings.Contains(err.Error(), "[grpc].socket_group") {
		t.Fatalf("start with an unknown group: got %v, want an error naming [grpc].socket_group", err)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	cfg := testConfig(t)
	if err := os.MkdirAll(filepath.Dir(cfg.GRPC.UnixSocket), 0o755); err != nil {
		t.Fatal(err)
	}
	// A socket file without a listener, as a killed daemon leaves behind.
	lis, err := net.Listen("unix", cfg.GRPC.UnixSocket)
	if err != nil {
		t.Fatal(err)
	}
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	lis.Close()

	start(t, cfg)
	client := dialUnix(t, cfg.GRPC.UnixSocket)
	if _, err := client.List(testContext(t), &sandboxv1.ListSandboxesRequest{}); err != nil {
		t.Fatalf("list after replacing the stale socket: %v", err)
	}
}

func TestSocketInUseRefused(t *testing.T) {
	cfg := testConfig(t)
	if err := os.MkdirAll(filepath.Dir(cfg.GRPC.UnixSocket), 0o755); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("unix", cfg.GRPC.UnixSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()

	mgr := servertest.NewManager(t, nil)
	_, err = daemon.Start(daemon.Options{Config: cfg, Manager: mgr, Logger: servertest.QuietLogger})
	if err == nil || !strings.Contains(err.Error(), "another process listens") {
		t.Fatalf("start on a socket in use: got %v, want an error saying another process listens", err)
	}
	if _, err := os.Stat(cfg.GRPC.UnixSocket); err != nil {
		t.Errorf("the other process's socket: %v, want it left in place", err)
	}
}

func TestSocketPathNotSocketRefused(t *testing.T) {
	cfg := testConfig(t)
	if err := os.MkdirAll(filepath.Dir(cfg.GRPC.UnixSocket), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.GRPC.UnixSocket, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	mgr := servertest.NewManager(t, nil)
	_, err := daemon.Start(daemon.Options{Config: cfg, Manager: mgr, Logger: servertest.QuietLogger})
	if err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("start on a regular file: got %v, want an error saying it is not a socket", err)
	}
}

func TestStartRejectsInvalidConfig(t *testing.T) {
	tests := []struct {
		name   string
		change func(*config.Config)
		want   []string
	}{
		{"tcp without tls or token", func(c *config.Config) { c.GRPC.TCPAddr = "127.0.0.1:0" },
			[]string{"[grpc].tcp_addr", "TLS", "token"}},
		{"tcp without token", func(c *config.Config) {
			c.GRPC.TCPAddr = "127.0.0.1:0"
			c.GRPC.TLSCert, c.GRPC.TLSKey = "/etc/hearth/cert.pem", "/etc/hearth/key.pem"
		}, []string{"[grpc].tcp_addr", "token_file"}},
		{"tcp without tls", func(c *config.Config) {
			c.GRPC.TCPAddr = "127.0.0.1:0"
			c.GRPC.TokenFile = "/etc/hearth/token"
		}, []string{"[grpc].tcp_addr", "tls_cert"}},
		{"bad cidr", func(c *config.Config) { c.Network.CIDR = "10.0.0.0/33" },
			[]string{"[network].cidr", "10.0.0.0/33", "prefix length 1 to 30"}},
		{"bad driver", func(c *config.Config) { c.Hearth.Driver = "xen" },
			[]string{"[hearth].driver", "xen"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			tc.change(&cfg)
			_, err := daemon.Start(daemon.Options{Config: cfg, Logger: servertest.QuietLogger})
			if err == nil {
				t.Fatal("got a running daemon, want an error")
			}
			for _, s := range tc.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			if _, err := os.Stat(cfg.GRPC.UnixSocket); !os.IsNotExist(err) {
				t.Errorf("socket after a refused start: got %v, want none", err)
			}
		})
	}
}

// tlsFiles writes a self-signed certificate for 127.0.0.1, its key and a
// token file, and returns their paths and a pool that trusts the
// certificate.
func tlsFiles(t *testing.T, token string) (cert, key, tokenFile string, roots *x509.CertPool) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "hearth test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key, tokenFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "token")
	files := map[string][]byte{
		cert:      pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		key:       pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		tokenFile: []byte(token + "\n"),
	}
	for path, data := range files {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	parsed, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	roots = x509.NewCertPool()
	roots.AddCert(parsed)
	return cert, key, tokenFile, roots
}

// bearer sends a fixed authorization header with every call.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	if b == "" {
		return nil, nil
	}
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

func TestTCPTokenAuth(t *testing.T) {
	const token = "s3cret-token-for-tests"
	cfg := testConfig(t)
	var roots *x509.CertPool
	cfg.GRPC.TLSCert, cfg.GRPC.TLSKey, cfg.GRPC.TokenFile, roots = tlsFiles(t, token)
	cfg.GRPC.TCPAddr = "127.0.0.1:0"
	d, _ := start(t, cfg)
	addr := d.TCPAddr()
	if addr == nil {
		t.Fatal("got no TCP address, want a listener")
	}

	creds := credentials.NewTLS(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})
	tests := []struct {
		name  string
		token bearer
		want  codes.Code
	}{
		{"valid token", token, codes.OK},
		{"wrong token", "not-the-token", codes.Unauthenticated},
		{"token prefix", bearer(token[:5]), codes.Unauthenticated},
		{"no token", "", codes.Unauthenticated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(creds), grpc.WithPerRPCCredentials(tc.token))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			client := sandboxv1.NewSandboxServiceClient(conn)

			_, err = client.List(testContext(t), &sandboxv1.ListSandboxesRequest{})
			if got := status.Code(err); got != tc.want {
				t.Errorf("unary call: got %s (%v), want %s", got, err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), token) {
				t.Errorf("error %q repeats the token", err)
			}

			stream, err := client.Events(testContext(t), &sandboxv1.SandboxEventsRequest{})
			if err == nil && tc.want == codes.OK {
				// Events sends headers once subscribed, then blocks.
				_, err = stream.Header()
			} else if err == nil {
				_, err = stream.Recv()
			}
			if got := status.Code(err); got != tc.want {
				t.Errorf("stream call: got %s (%v), want %s", got, err, tc.want)
			}
		})
	}

	// The Unix socket needs no token: its mode and group guard it.
	if _, err := dialUnix(t, cfg.GRPC.UnixSocket).List(testContext(t), &sandboxv1.ListSandboxesRequest{}); err != nil {
		t.Errorf("list over the Unix socket without a token: %v", err)
	}
}

func TestTCPRejectsPlaintext(t *testing.T) {
	cfg := testConfig(t)
	cfg.GRPC.TLSCert, cfg.GRPC.TLSKey, cfg.GRPC.TokenFile, _ = tlsFiles(t, "token")
	cfg.GRPC.TCPAddr = "127.0.0.1:0"
	d, _ := start(t, cfg)
	conn, err := grpc.NewClient(d.TCPAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = sandboxv1.NewSandboxServiceClient(conn).List(ctx, &sandboxv1.ListSandboxesRequest{})
	if err == nil {
		t.Fatal("plaintext call over the TLS listener: got success, want an error")
	}
}

func TestEmptyTokenFileRefused(t *testing.T) {
	cfg := testConfig(t)
	cfg.GRPC.TLSCert, cfg.GRPC.TLSKey, cfg.GRPC.TokenFile, _ = tlsFiles(t, "   ")
	cfg.GRPC.TCPAddr = "127.0.0.1:0"
	mgr := servertest.NewManager(t, nil)
	_, err := daemon.Start(daemon.Options{Config: cfg, Manager: mgr, Logger: servertest.QuietLogger})
	if err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("start with an empty token file: got %v, want an error saying it is empty", err)
	}
}

func TestShutdownRemovesSandboxes(t *testing.T) {
	cfg := testConfig(t)
	mgr := servertest.NewManager(t, nil)
	d, err := daemon.Start(daemon.Options{Config: cfg, Manager: mgr, Logger: servertest.QuietLogger})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	client := dialUnix(t, cfg.GRPC.UnixSocket)
	ctx := testContext(t)
	events, err := client.Events(ctx, &sandboxv1.SandboxEventsRequest{})
	if err != nil {
		t.Fatalf("events: %v", err)
	}
	for _, id := range []string{"one", "two"} {
		if _, err := client.Create(ctx, &sandboxv1.CreateSandboxRequest{Id: id, Network: &sandboxv1.NetworkSpec{Mode: "none"}}); err != nil {
			t.Fatalf("create %s: %v", id, err)
		}
	}
	sb, err := mgr.Get("one")
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.WaitReady(ctx); err != nil {
		t.Fatalf("wait ready: %v", err)
	}
	run, err := client.Run(ctx, &sandboxv1.RunRequest{Id: "one", Cmd: []string{"sleep", "100.75"}})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	for sb.Info().State != sandbox.StateRunning {
		if ctx.Err() != nil {
			t.Fatalf("sandbox one never ran the command: %v", ctx.Err())
		}
		time.Sleep(10 * time.Millisecond)
	}

	if err := d.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if left := mgr.List(sandbox.ListFilter{}); len(left) != 0 {
		t.Errorf("sandboxes after shutdown: got %d, want 0", len(left))
	}
	if _, err := os.Stat(cfg.GRPC.UnixSocket); !os.IsNotExist(err) {
		t.Errorf("socket after shutdown: got %v, want it removed", err)
	}
	for {
		if _, err := run.Recv(); err != nil {
			if status.Code(err) == codes.OK {
				t.Errorf("run during shutdown: got %v, want an error status", err)
			}
			break
		}
	}
	for {
		_, err := events.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.Unavailable {
			t.Errorf("events during shutdown: got %v, want Unavailable", err)
		}
		break
	}
}
