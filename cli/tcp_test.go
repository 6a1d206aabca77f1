package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearthvm/hearth/config"
	"github.com/hearthvm/hearth/daemon"
	"github.com/hearthvm/hearth/server/servertest"
)

// writeCertificate writes a self-signed certificate for 127.0.0.1 and its
// key into dir.
func writeCertificate(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "hearth test daemon"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true,

		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
	return certFile, keyFile
}

func writePEM(t *testing.T, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestTCPWithTLSAndToken(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeCertificate(t, dir)
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	wrongToken := filepath.Join(dir, "wrong")
	if err := os.WriteFile(wrongToken, []byte("guess"), 0o600); err != nil {
		t.Fatal(err)
	}

	cfg := config.Default()
	cfg.Hearth.DataDir = filepath.Join(dir, "data")
	cfg.GRPC.UnixSocket = filepath.Join(dir, "hearth.sock")
	cfg.GRPC.TCPAddr = "127.0.0.1:0"
	cfg.GRPC.TLSCert, cfg.GRPC.TLSKey, cfg.GRPC.TokenFile = cert, key, tokenFile
	d, err := daemon.Start(daemon.Options{Config: cfg, Manager: servertest.NewManager(t, nil), Logger: servertest.QuietLogger})
	if err != nil {
		t.Fatalf("start daemon: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), servertest.Deadline)
		defer cancel()
		_ = d.Shutdown(ctx)
	})
	host := "tcp://" + d.TCPAddr().String()

	tests := []struct {
		name     string
		args     []string
		code     int
		contains string
	}{
		{"token file", []string{"--tls-ca", cert, "--token-file", tokenFile, "ls", "-q"}, 0, ""},
		{"wrong token", []string{"--tls-ca", cert, "--token-file", wrongToken, "ls"}, exitUsage, "rejected the credentials"},
		{"no ca", []string{"--token-file", tokenFile, "ls"}, exitUsage, "--tls-ca"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("HEARTH_TOKEN", "")
			res := hearth(t, host, "", tc.args...)
			if res.code != tc.code {
				t.Fatalf("got exit %d stderr %q, want %d", res.code, res.stderr, tc.code)
			}
			if !strings.Contains(res.stderr, tc.contains) {
				t.Errorf("got stderr %q, want it to contain %q", res.stderr, tc.contains)
			}
		})
	}

	t.Run("token from environment", func(t *testing.T) {
		t.Setenv("HEARTH_TOKEN", "s3cret")
		if res := hearth(t, host, "", "--tls-ca", cert, "ls", "-q"); res.code != 0 {
			t.Errorf("got exit %d stderr %q, want 0", res.code, res.stderr)
		}
	})
}
