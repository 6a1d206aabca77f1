package cli

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestParseHost(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    hostAddress
		wantErr string
	}{
		{"unix url", "unix:///run/hearth/hearth.sock", hostAddress{"unix", "/run/hearth/hearth.sock"}, ""},
		{"bare path", "/tmp/h.sock", hostAddress{"unix", "/tmp/h.sock"}, ""},
		{"tcp url", "tcp://127.0.0.1:7443", hostAddress{"tcp", "127.0.0.1:7443"}, ""},
		{"host and port", "localhost:7443", hostAddress{"tcp", "localhost:7443"}, ""},
		{"relative unix path", "unix://run/h.sock", hostAddress{}, "absolute socket path"},
		{"other scheme", "http://127.0.0.1:80", hostAddress{}, "use unix://"},
		{"tcp without port", "tcp://127.0.0.1", hostAddress{}, "use unix://"},
		{"empty", "", hostAddress{}, "use unix://"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseHost(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want %v", err, tc.want)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestHostPrecedence(t *testing.T) {
	tests := []struct {
		name         string
		flag, env    string
		want         string
		wantExplicit bool
	}{
		{"flag over env", "unix:///flag.sock", "unix:///env.sock", "unix:///flag.sock", true},
		{"env", "", "unix:///env.sock", "unix:///env.sock", true},
		{"default", "", "", defaultHost, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("HEARTH_HOST", tc.env)
			g := &globalOptions{hostFlag: tc.flag}
			addr, explicit, err := g.host()
			if err != nil {
				t.Fatal(err)
			}
			if addr.String() != tc.want || explicit != tc.wantExplicit {
				t.Errorf("got %s explicit %v, want %s explicit %v", addr, explicit, tc.want, tc.wantExplicit)
			}
		})
	}
}

func TestTCPNeedsCAAndToken(t *testing.T) {
	t.Setenv("HEARTH_TOKEN", "")
	addr := hostAddress{"tcp", "127.0.0.1:7443"}
	if _, err := (&globalOptions{}).transportOptions(addr); err == nil || !strings.Contains(err.Error(), "--tls-ca") {
		t.Errorf("tcp without --tls-ca: got %v, want an error naming --tls-ca", err)
	}
	g := &globalOptions{}
	if _, err := g.token(); err == nil || !strings.Contains(err.Error(), "HEARTH_TOKEN") {
		t.Errorf("no token: got %v, want an error naming HEARTH_TOKEN", err)
	}
	t.Setenv("HEARTH_TOKEN", " secret \n")
	if got, err := g.token(); err != nil || got != "secret" {
		t.Errorf("token from HEARTH_TOKEN: got %q, %v; want %q", got, err, "secret")
	}
}

func TestFromRPC(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"not found", status.Error(codes.NotFound, `not found: sandbox "x"`), `not found: sandbox "x"`},
		{"unavailable", status.Error(codes.Unavailable, "shutting down"), "the hearth daemon is unavailable: shutting down"},
		{"unauthenticated", status.Error(codes.Unauthenticated, "bad token"), "the daemon rejected the credentials: bad token"},
		{"internal", status.Error(codes.Internal, "boom"), "the hearth daemon failed: boom"},
		{"plain error", errors.New("local"), "local"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := fromRPC(tc.err)
			if got.Error() != tc.want {
				t.Errorf("got %q, want %q", got.Error(), tc.want)
			}
			if strings.Contains(got.Error(), "rpc error") {
				t.Errorf("got %q, want no gRPC prefix", got.Error())
			}
		})
	}
	if fromRPC(nil) != nil {
		t.Error("fromRPC(nil): got an error, want nil")
	}
}

func TestParseTTL(t *testing.T) {
	tests := []struct {
		in      string
		want    uint32
		wantErr bool
	}{
		{"0", 0, false},
		{"90s", 90, false},
		{"10m", 600, false},
		{"1.5s", 0, true},
		{"-5s", 0, true},
		{"soon", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseTTL(tc.in)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("got %d, %v; want %d, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestFormatAge(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	tests := []struct {
		ago  time.Duration
		want string
	}{
		{5 * time.Second, "5s ago"},
		{3 * time.Minute, "3m ago"},
		{5 * time.Hour, "5h ago"},
		{72 * time.Hour, "3d ago"},
	}
	for _, tc := range tests {
		if got := formatAge(now.Add(-tc.ago).Unix(), now); got != tc.want {
			t.Errorf("formatAge(%s ago): got %q, want %q", tc.ago, got, tc.want)
		}
	}
	if got := formatAge(0, now); got != "-" {
		t.Errorf("formatAge(0): got %q, want -", got)
	}
}
