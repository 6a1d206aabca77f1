package api_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hearthvm/hearth/vmm/firecracker/api"
)

// serveUnix serves h on a Unix socket in a temporary directory.
func serveUnix(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestErrorCarriesMessage(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		body    string
		wantMsg string
	}{
		{"fault message", 400, `{"fault_message":"The requested operation is not supported before starting the microVM."}`,
			"The requested operation is not supported before starting the microVM."},
		{"http error", 400, `{"error":"Request payload with size 60000 is larger than the limit of 51200 allowed by server."}`,
			"Request payload with size 60000 is larger than the limit of 51200 allowed by server."},
		{"mmds too large", 413, `{"fault_message":"The MMDS patch request would exceed the limit"}`,
			"The MMDS patch request would exceed the limit"},
		{"plain text", 503, "busy", "busy"},
		{"empty body", 500, "", "Internal Server Error"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sock := serveUnix(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body)
			})
			c := api.New(sock)
			defer c.Close()
			err := c.Pause(context.Background())
			var apiErr *api.Error
			if !errors.As(err, &apiErr) {
				t.Fatalf("got error %v (%T), want *api.Error", err, err)
			}
			if apiErr.StatusCode != tc.status {
				t.Errorf("status: got %d, want %d", apiErr.StatusCode, tc.status)
			}
			if apiErr.Message != tc.wantMsg {
				t.Errorf("message: got %q, want %q", apiErr.Message, tc.wantMsg)
			}
			if apiErr.Method != "PATCH" || apiErr.Path != "/vm" {
				t.Errorf("request: got %s %s, want PATCH /vm", apiErr.Method, apiErr.Path)
			}
			if !strings.Contains(err.Error(), "PATCH /vm") {
				t.Errorf("error text %q: want it to name PATCH /vm", err)
			}
		})
	}
}

func TestRequestsUseContentLength(t *testing.T) {
	var gotTE []string
	var gotLen int64
	sock := serveUnix(t, func(w http.ResponseWriter, r *http.Request) {
		gotTE, gotLen = r.TransferEncoding, r.ContentLength
		w.WriteHeader(http.StatusNoContent)
	})
	c := api.New(sock)
	defer c.Close()
	if err := c.PutMetrics(context.Background(), api.Metrics{MetricsPath: "m"}); err != nil {
		t.Fatal(err)
	}
	if len(gotTE) != 0 {
		t.Errorf("transfer encoding: got %v, want none", gotTE)
	}
	if want := int64(len(`{"metrics_path":"m"}`)); gotLen != want {
		t.Errorf("content length: got %d, want %d", gotLen, want)
	}
}

func TestMTUNeedsVersion(t *testing.T) {
	tests := []struct {
		version string
		wantErr bool
	}{
		{"1.15.1", true},
		{"1.16.0", false},
	}
	for _, tc := range tests {
		t.Run(tc.version, func(t *testing.T) {
			rec := &recorder{version: tc.version}
			c := api.New("unused", api.WithTransport(rec))
			err := c.PutNetworkInterface(context.Background(), api.NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", MTU: 1400})
			if got := errors.Is(err, api.ErrUnsupported); got != tc.wantErr {
				t.Fatalf("errors.Is(err, ErrUnsupported): got %v (err %v), want %v", got, err, tc.wantErr)
			}
			body := lastBody(rec, "/network-interfaces/eth0")
			if tc.wantErr && body != nil {
				t.Errorf("got a request %s, want none", body)
			}
			if !tc.wantErr && !strings.Contains(string(body), `"mtu":1400`) {
				t.Errorf("body %s: want mtu 1400", body)
			}
		})
	}
}

func TestResourceIDRejected(t *testing.T) {
	rec := &recorder{version: "1.16.1"}
	c := api.New("unused", api.WithTransport(rec))
	err := c.PutDrive(context.Background(), api.Drive{DriveID: "root-fs", PathOnHost: "r"})
	if err == nil {
		t.Fatal("got nil error for drive id root-fs, want an error")
	}
	if len(rec.requests) != 0 {
		t.Errorf("got %d requests, want none", len(rec.requests))
	}
}

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in      string
		want    api.Version
		wantErr bool
	}{
		{"1.16.1", api.Version{1, 16, 1}, false},
		{"v1.15.0", api.Version{1, 15, 0}, false},
		{"1.17.0-dev", api.Version{1, 17, 0}, false},
		{"1.16", api.Version{}, true},
		{"x.y.z", api.Version{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := api.ParseVersion(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("error: got %v, want error %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}
