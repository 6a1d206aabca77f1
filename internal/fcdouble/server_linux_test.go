package fcdouble

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearthvm/hearth/vmm/firecracker/api"
)

func newTestServer(t *testing.T, version string) *server {
	t.Helper()
	v, err := api.ParseVersion(version)
	if err != nil {
		t.Fatal(err)
	}
	return &server{
		cfg:     Config{ID: "t", ClaimVersion: v, MaxPayload: defaultMaxPayload, MMDSSizeLimit: 64, JailUID: -1, JailGID: -1},
		exit:    func(int) {},
		machine: machineState{VCPUCount: 1, MemSizeMiB: 128},
		drives:  map[string]map[string]any{}, ifaces: map[string]map[string]any{},
	}
}

func TestRequestStrictness(t *testing.T) {
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(kernel, nil, 0o644)
	tests := []struct {
		name    string
		version string
		phase   phase
		method  string
		path    string
		body    string
		want    int
		wantMsg string
	}{
		{"machine config ok", "1.16.1", phaseNotStarted, "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":true}`, 204, ""},
		{"unknown field", "1.16.1", phaseNotStarted, "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"bogus":true}`, 400, "unknown field `bogus`"},
		{"missing required", "1.16.1", phaseNotStarted, "PUT", "/machine-config", `{"vcpu_count":2}`, 400, "missing field `mem_size_mib`"},
		{"vcpu range", "1.16.1", phaseNotStarted, "PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":256}`, 400, "vcpu_count"},
		{"smt odd vcpus", "1.16.1", phaseNotStarted, "PUT", "/machine-config", `{"vcpu_count":3,"mem_size_mib":256,"smt":true}`, 400, "even"},
		{"bad enum", "1.16.1", phaseNotStarted, "PUT", "/actions", `{"action_type":"Reboot"}`, 400, "unknown variant"},
		{"mtu on 1.15.1", "1.15.1", phaseNotStarted, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","mtu":1500}`, 400, "unknown field `mtu`"},
		{"mtu on 1.16.1", "1.16.1", phaseNotStarted, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","mtu":1500}`, 204, ""},
		{"mtu range", "1.16.1", phaseNotStarted, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","mtu":60}`, 400, "mtu"},
		{"long tap name", "1.16.1", phaseNotStarted, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"a-very-long-tap0"}`, 400, "Invalid interface name"},
		{"hyphen in id", "1.16.1", phaseNotStarted, "PUT", "/drives/root-fs", `{"drive_id":"root-fs","is_root_device":true,"is_read_only":true,"path_on_host":"x"}`, 400, "alphanumeric characters and underscores"},
		{"path body mismatch", "1.16.1", phaseNotStarted, "PUT", "/drives/rootfs", `{"drive_id":"other","is_root_device":true,"is_read_only":true,"path_on_host":"x"}`, 400, "does not match"},
		{"drive file missing", "1.16.1", phaseNotStarted, "PUT", "/drives/rootfs", `{"drive_id":"rootfs","is_root_device":true,"is_read_only":true,"path_on_host":"/nonexistent"}`, 400, "block device"},
		{"cid below 3", "1.16.1", phaseNotStarted, "PUT", "/vsock", `{"guest_cid":2,"uds_path":"v.sock"}`, 400, "guest_cid"},
		{"boot source ok", "1.16.1", phaseNotStarted, "PUT", "/boot-source", `{"kernel_image_path":"` + kernel + `"}`, 204, ""},
		{"flush metrics before boot", "1.16.1", phaseNotStarted, "PUT", "/actions", `{"action_type":"FlushMetrics"}`, 400, "before starting"},
		{"pause before boot", "1.16.1", phaseNotStarted, "PATCH", "/vm", `{"state":"Paused"}`, 400, "before starting"},
		{"balloon patch before boot", "1.16.1", phaseNotStarted, "PATCH", "/balloon", `{"amount_mib":1}`, 400, "before starting"},
		{"logger after boot", "1.16.1", phaseRunning, "PUT", "/logger", `{"level":"Info"}`, 400, "after starting"},
		{"metrics after boot", "1.16.1", phaseRunning, "PUT", "/metrics", `{"metrics_path":"m"}`, 400, "after starting"},
		{"drive after boot", "1.16.1", phaseRunning, "PUT", "/drives/rootfs", `{"drive_id":"rootfs","is_root_device":true,"is_read_only":true,"path_on_host":"x"}`, 400, "after starting"},
		{"snapshot while running", "1.16.1", phaseRunning, "PUT", "/snapshot/create", `{"snapshot_path":"s","mem_file_path":"m"}`, 400, "paused"},
		{"load with vsock override on 1.15.1", "1.15.1", phaseNotStarted, "PUT", "/snapshot/load", `{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m"},"vsock_override":{"uds_path":"v"}}`, 400, "unknown field `vsock_override`"},
		{"load with track dirty on 1.12.0", "1.12.0", phaseNotStarted, "PUT", "/snapshot/load", `{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m"},"track_dirty_pages":true}`, 400, "unknown field `track_dirty_pages`"},
		{"load with both memory fields", "1.16.1", phaseNotStarted, "PUT", "/snapshot/load", `{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m"},"mem_file_path":"m"}`, 400, "too many fields"},
		{"metrics ignores unknown fields", "1.16.1", phaseNotStarted, "PUT", "/metrics", `{"metrics_path":"` + filepath.Join(t.TempDir(), "m") + `","emit_id":true}`, 204, ""},
		{"mmds over limit", "1.16.1", phaseNotStarted, "PUT", "/mmds", `{"key":"` + strings.Repeat("x", 100) + `"}`, 413, ""},
		{"empty patch", "1.16.1", phaseNotStarted, "PATCH", "/machine-config", `{}`, 400, "Empty PATCH"},
		{"unknown path", "1.16.1", phaseNotStarted, "PUT", "/reboot", `{}`, 400, "Invalid request"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestServer(t, tc.version)
			s.phase = tc.phase
			rec := httptest.NewRecorder()
			s.serveHTTP(rec, httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body)))
			if rec.Code != tc.want {
				t.Errorf("status: got %d (%s), want %d", rec.Code, rec.Body, tc.want)
			}
			if tc.wantMsg != "" && !strings.Contains(rec.Body.String(), tc.wantMsg) {
				t.Errorf("body: got %s, want it to contain %q", rec.Body, tc.wantMsg)
			}
			if tc.want >= 400 && !strings.Contains(rec.Body.String(), `"fault_message"`) {
				t.Errorf("body: got %s, want the fault_message shape", rec.Body)
			}
		})
	}
}

func TestLoadOnlyOnFreshProcess(t *testing.T) {
	tests := []struct {
		name  string
		setup []string // PUT path and body pairs
		want  int
	}{
		{"after machine config", []string{"/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`}, 400},
		{"after logger and metrics", []string{"/logger", `{"level":"Info"}`, "/metrics", `{"metrics_path":"METRICS"}`}, 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestServer(t, "1.16.1")
			metrics := filepath.Join(t.TempDir(), "m")
			for i := 0; i < len(tc.setup); i += 2 {
				rec := httptest.NewRecorder()
				body := strings.ReplaceAll(tc.setup[i+1], "METRICS", metrics)
				s.serveHTTP(rec, httptest.NewRequest("PUT", tc.setup[i], strings.NewReader(body)))
				if rec.Code != 204 {
					t.Fatalf("setup %s: got %d %s", tc.setup[i], rec.Code, rec.Body)
				}
			}
			rec := httptest.NewRecorder()
			s.serveHTTP(rec, httptest.NewRequest("PUT", "/snapshot/load",
				strings.NewReader(`{"snapshot_path":"/nonexistent","mem_backend":{"backend_type":"File","backend_path":"/nonexistent"}}`)))
			if rec.Code != tc.want {
				t.Errorf("load: got %d, want %d", rec.Code, tc.want)
			}
			notFresh := strings.Contains(rec.Body.String(), "after configuring boot-specific resources")
			if wantNotFresh := tc.name == "after machine config"; notFresh != wantNotFresh {
				t.Errorf("load body %s: not-fresh message %v, want %v", rec.Body, notFresh, wantNotFresh)
			}
		})
	}
}

func TestFailedLoadIsFatal(t *testing.T) {
	s := newTestServer(t, "1.16.1")
	exited := make(chan int, 1)
	s.exit = func(code int) { exited <- code }
	load := `{"snapshot_path":"/nonexistent","mem_backend":{"backend_type":"File","backend_path":"/nonexistent"}}`
	rec := httptest.NewRecorder()
	s.serveHTTP(rec, httptest.NewRequest("PUT", "/snapshot/load", strings.NewReader(load)))
	if rec.Code != 400 {
		t.Fatalf("load: got %d, want 400", rec.Code)
	}
	rec = httptest.NewRecorder()
	s.serveHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if rec.Code != 400 {
		t.Errorf("call after failed load: got %d, want 400", rec.Code)
	}
	select {
	case code := <-exited:
		if code == 0 {
			t.Errorf("exit code: got 0, want non-zero")
		}
	case <-time.After(5 * time.Second):
		t.Error("process: got no exit after the failed load, want one")
	}
}

func TestHTTPLevelErrors(t *testing.T) {
	tests := []struct {
		name    string
		req     func() *http.Request
		wantMsg string
	}{
		{"payload over limit", func() *http.Request {
			return httptest.NewRequest("PUT", "/mmds", bytes.NewReader(make([]byte, defaultMaxPayload+1)))
		}, "larger than the limit of 51200"},
		{"chunked body", func() *http.Request {
			r := httptest.NewRequest("PUT", "/logger", strings.NewReader(`{}`))
			r.TransferEncoding = []string{"chunked"}
			r.ContentLength = -1
			return r
		}, "chunked"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestServer(t, "1.16.1")
			rec := httptest.NewRecorder()
			s.serveHTTP(rec, tc.req())
			if rec.Code != 400 {
				t.Errorf("status: got %d, want 400", rec.Code)
			}
			if !strings.Contains(rec.Body.String(), `"error"`) || !strings.Contains(rec.Body.String(), tc.wantMsg) {
				t.Errorf("body: got %s, want the error shape with %q", rec.Body, tc.wantMsg)
			}
		})
	}
	s := newTestServer(t, "1.16.1")
	rec := httptest.NewRecorder()
	s.serveHTTP(rec, httptest.NewRequest("GET", "/", strings.NewReader(`{}`)))
	if rec.Code != 400 || !strings.Contains(rec.Body.String(), "GET request cannot have a body") {
		t.Errorf("GET with body: got %d %s, want 400 GET request cannot have a body", rec.Code, rec.Body)
	}
}

func TestVsockBindRejectsExistingFile(t *testing.T) {
	s := newTestServer(t, "1.16.1")
	sock := filepath.Join(t.TempDir(), "v.sock")
	os.WriteFile(sock, nil, 0o600)
	rec := httptest.NewRecorder()
	s.serveHTTP(rec, httptest.NewRequest("PUT", "/vsock", strings.NewReader(`{"guest_cid":3,"uds_path":"`+sock+`"}`)))
	if rec.Code != 400 || !strings.Contains(rec.Body.String(), "Address in use") {
		t.Errorf("PUT /vsock over a file: got %d %s, want 400 Address in use", rec.Code, rec.Body)
	}
	os.Remove(sock)
	rec = httptest.NewRecorder()
	s.serveHTTP(rec, httptest.NewRequest("PUT", "/vsock", strings.NewReader(`{"guest_cid":3,"uds_path":"`+sock+`"}`)))
	if rec.Code != 204 {
		t.Fatalf("PUT /vsock: got %d %s, want 204", rec.Code, rec.Body)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Errorf("socket after PUT /vsock: got %v, want bound at PUT time", err)
	}
	s.vsock.close()
	if _, err := os.Stat(sock); err != nil {
		t.Errorf("socket after close: got %v, want left behind as Firecracker leaves it", err)
	}
}

func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "pair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		t.Cleanup(func() { c.Close() })
	}
	return conns[0], conns[1]
}

func TestReadConnect(t *testing.T) {
	tests := []struct {
		name     string
		writes   []string
		wantPort uint32
		wantErr  bool
	}{
		{"one write", []string{"CONNECT 52\n"}, 52, false},
		{"ten bytes lower case", []string{"connect 5\n"}, 5, false},
		{"split write", []string{"CONN", "ECT 52\n"}, 0, true},
		{"too long", []string{"CONNECT 52" + strings.Repeat(" ", 30) + "\n"}, 0, true},
		{"not connect", []string{"HELLO 5200\n"}, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, b := socketPair(t)
			go func() {
				for _, w := range tc.writes {
					a.Write([]byte(w))
					time.Sleep(50 * time.Millisecond)
				}
			}()
			port, err := readConnect(b)
			if (err != nil) != tc.wantErr {
				t.Fatalf("error: got %v, want error %v", err, tc.wantErr)
			}
			if port != tc.wantPort {
				t.Errorf("port: got %d, want %d", port, tc.wantPort)
			}
		})
	}
}

func TestJailerArguments(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the jailer refuses to run otherwise")
	}
	exe, _ := os.Executable()
	base := t.TempDir()
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"valid", []string{"--id", "a-1", "--exec-file", exe, "--uid", "1", "--gid", "1", "--chroot-base-dir", base}, ""},
		{"underscore id", []string{"--id", "a_1", "--exec-file", exe, "--uid", "1", "--gid", "1", "--chroot-base-dir", base}, "invalid instance ID"},
		{"missing uid", []string{"--id", "a", "--exec-file", exe, "--gid", "1"}, "--uid"},
		{"missing base", []string{"--id", "a", "--exec-file", exe, "--uid", "1", "--gid", "1", "--chroot-base-dir", base + "/none"}, "chroot base"},
		{"dotted parent cgroup", []string{"--id", "a", "--exec-file", exe, "--uid", "1", "--gid", "1", "--chroot-base-dir", base, "--parent-cgroup", "a/../b"}, "parent cgroup"},
		{"bad resource limit", []string{"--id", "a", "--exec-file", exe, "--uid", "1", "--gid", "1", "--chroot-base-dir", base, "--resource-limit", "cpu=1"}, "resource limit"},
		{"bad cgroup", []string{"--id", "a", "--exec-file", exe, "--uid", "1", "--gid", "1", "--chroot-base-dir", base, "--cgroup", "cpus"}, "cgroup argument"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseJailerArgs(tc.args)
			if tc.wantErr == "" {
				if err != nil {
					t.Errorf("got %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("got %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestJailerRejectsReusedChroot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: mknod of device nodes")
	}
	chroot := t.TempDir()
	if err := buildJailDevices(chroot, 65534, 65534); err != nil {
		t.Fatalf("first build: %v", err)
	}
	err := buildJailDevices(chroot, 65534, 65534)
	if err == nil || !strings.Contains(err.Error(), "File exists") && !strings.Contains(err.Error(), "file exists") {
		t.Errorf("second build: got %v, want a mknod file-exists error", err)
	}
}

func TestStartupChecks(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "existing.sock")
	os.WriteFile(existing, nil, 0o600)
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"api socket exists", []string{"--api-sock", existing, "--id", "a"}, exitGeneric},
		{"invalid id", []string{"--api-sock", filepath.Join(dir, "a.sock"), "--id", "bad_id"}, exitPanic},
		{"seccomp flags together", []string{"--api-sock", filepath.Join(dir, "b.sock"), "--no-seccomp", "--seccomp-filter", "f"}, exitArgParsing},
		{"unknown flag", []string{"--api-sock", filepath.Join(dir, "c.sock"), "--bogus"}, exitArgParsing},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Main(tc.args); got != tc.want {
				t.Errorf("exit code: got %d, want %d", got, tc.want)
			}
		})
	}
	if _, err := os.Stat(existing); err != nil {
		t.Errorf("existing socket file: got %v, want left in place", err)
	}
}
