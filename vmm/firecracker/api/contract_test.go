package api_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/hearthvm/hearth/internal/fcdouble/swagger"
	"github.com/hearthvm/hearth/vmm/firecracker/api"
)

// recordedRequest is one request the client sent.
type recordedRequest struct {
	Method        string
	Path          string
	Body          []byte
	ContentLength int64
	Chunked       bool
}

// recorder is an http.RoundTripper that stores each request and answers
// like Firecracker does: 204 for mutations, 200 with a body for GETs.
type recorder struct {
	version string

	mu       sync.Mutex
	requests []recordedRequest
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		body, _ = io.ReadAll(req.Body)
		req.Body.Close()
	}
	r.mu.Lock()
	r.requests = append(r.requests, recordedRequest{
		Method: req.Method, Path: req.URL.Path, Body: body,
		ContentLength: req.ContentLength,
		Chunked:       len(req.TransferEncoding) > 0,
	})
	r.mu.Unlock()

	status, answer := http.StatusNoContent, ""
	if req.Method == http.MethodGet {
		status = http.StatusOK
		switch req.URL.Path {
		case "/version":
			answer = `{"firecracker_version":"` + r.version + `"}`
		case "/":
			answer = `{"app_name":"Firecracker","id":"a","state":"Running","vmm_version":"` + r.version + `"}`
		case "/balloon/statistics":
			answer = `{"target_pages":1,"actual_pages":1,"target_mib":1,"actual_mib":1}`
		case "/machine-config":
			answer = `{"vcpu_count":1,"mem_size_mib":128}`
		default:
			answer = `{}`
		}
	}
	return &http.Response{
		StatusCode: status, Body: io.NopCloser(strings.NewReader(answer)),
		Header: http.Header{}, Request: req, ContentLength: int64(len(answer)),
	}, nil
}

func ptr[T any](v T) *T { return &v }

var fullLimiter = &api.RateLimiter{
	Bandwidth: &api.TokenBucket{Size: 1 << 20, OneTimeBurst: ptr(int64(1 << 21)), RefillTimeMillis: 100},
	Ops:       &api.TokenBucket{Size: 1000, RefillTimeMillis: 1000},
}

// exerciseClient calls every client method with every optional field set
// that the version supports, and returns the errors of the calls.
func exerciseClient(t *testing.T, c *api.Client, v api.Version) {
	t.Helper()
	ctx := context.Background()
	newLoad := v.AtLeast(api.VersionVsockOverride)
	var mmds map[string]any
	calls := []struct {
		name string
		call func() error
	}{
		{"describe instance", func() error { _, err := c.DescribeInstance(ctx); return err }},
		{"version", func() error { _, err := c.Version(ctx); return err }},
		{"put machine config", func() error {
			return c.PutMachineConfig(ctx, api.MachineConfig{VCPUCount: 2, MemSizeMiB: 256,
				SMT: ptr(false), TrackDirtyPages: ptr(true), HugePages: "2M", CPUTemplate: "None"})
		}},
		{"patch machine config", func() error {
			return c.PatchMachineConfig(ctx, api.MachineConfigPatch{VCPUCount: ptr(1), MemSizeMiB: ptr(128),
				SMT: ptr(false), TrackDirtyPages: ptr(false), HugePages: "None", CPUTemplate: "T2"})
		}},
		{"get machine config", func() error { _, err := c.GetMachineConfig(ctx); return err }},
		{"put boot source", func() error {
			return c.PutBootSource(ctx, api.BootSource{KernelImagePath: "vmlinux", InitrdPath: "initrd", BootArgs: "console=ttyS0"})
		}},
		{"put drive", func() error {
			return c.PutDrive(ctx, api.Drive{DriveID: "rootfs", PathOnHost: "rootfs.ext4", IsRootDevice: true,
				IsReadOnly: false, PartUUID: "0eaa91a0-01", CacheType: api.CacheWriteback, IOEngine: api.IOEngineAsync,
				RateLimiter: fullLimiter})
		}},
		{"patch drive", func() error {
			return c.PatchDrive(ctx, api.DrivePatch{DriveID: "rootfs", PathOnHost: "other.ext4", RateLimiter: fullLimiter})
		}},
		{"put network interface", func() error {
			ni := api.NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "AA:FC:00:00:00:01",
				RxRateLimiter: fullLimiter, TxRateLimiter: fullLimiter}
			if v.AtLeast(api.VersionInterfaceMTU) {
				ni.MTU = 1500
			}
			return c.PutNetworkInterface(ctx, ni)
		}},
		{"patch network interface", func() error {
			return c.PatchNetworkInterface(ctx, api.NetworkInterfacePatch{IfaceID: "eth0", RxRateLimiter: fullLimiter, TxRateLimiter: fullLimiter})
		}},
		{"put vsock", func() error { return c.PutVsock(ctx, api.Vsock{GuestCID: 3, UDSPath: "v.sock"}) }},
		{"put balloon", func() error {
			return c.PutBalloon(ctx, api.Balloon{AmountMiB: 64, DeflateOnOOM: true, StatsPollingIntervalSeconds: 1,
				FreePageHinting: true, FreePageReporting: true})
		}},
		{"patch balloon", func() error { return c.PatchBalloon(ctx, api.BalloonUpdate{AmountMiB: 32}) }},
		{"get balloon", func() error { _, err := c.GetBalloon(ctx); return err }},
		{"get balloon stats", func() error { _, err := c.GetBalloonStats(ctx); return err }},
		{"patch balloon stats", func() error {
			return c.PatchBalloonStats(ctx, api.BalloonStatsUpdate{StatsPollingIntervalSeconds: 5})
		}},
		{"put entropy", func() error { return c.PutEntropy(ctx, api.Entropy{RateLimiter: fullLimiter}) }},
		{"put empty entropy", func() error { return c.PutEntropy(ctx, api.Entropy{}) }},
		{"put logger", func() error {
			return c.PutLogger(ctx, api.Logger{LogPath: "fc.log", Level: "Debug", ShowLevel: ptr(true),
				ShowLogOrigin: ptr(true), Module: "api_server"})
		}},
		{"put metrics", func() error { return c.PutMetrics(ctx, api.Metrics{MetricsPath: "fc.metrics"}) }},
		{"put mmds", func() error { return c.PutMMDS(ctx, map[string]any{"latest": map[string]any{"a": 1}}) }},
		{"patch mmds", func() error { return c.PatchMMDS(ctx, map[string]any{"b": "c"}) }},
		{"get mmds", func() error { return c.GetMMDS(ctx, &mmds) }},
		{"put mmds config", func() error {
			return c.PutMMDSConfig(ctx, api.MMDSConfig{Version: "V2", NetworkInterfaces: []string{"eth0"}, IPv4Address: "169.254.169.254"})
		}},
		{"instance start", func() error { return c.InstanceStart(ctx) }},
		{"send ctrl alt del", func() error { return c.SendCtrlAltDel(ctx) }},
		{"flush metrics", func() error { return c.FlushMetrics(ctx) }},
		{"pause", func() error { return c.Pause(ctx) }},
		{"resume", func() error { return c.Resume(ctx) }},
		{"create snapshot", func() error {
			return c.CreateSnapshot(ctx, api.SnapshotCreate{SnapshotPath: "s.state", MemFilePath: "s.mem", SnapshotType: api.SnapshotDiff})
		}},
		{"load snapshot", func() error {
			l := api.SnapshotLoad{SnapshotPath: "s.state", MemBackend: api.MemBackend{BackendType: api.MemBackendFile, BackendPath: "s.mem"},
				TrackDirtyPages: true, ResumeVM: true}
			if v.AtLeast(api.VersionNetworkOverrides) {
				l.NetworkOverrides = []api.NetworkOverride{{IfaceID: "eth0", HostDevName: "tap1"}}
			}
			if newLoad {
				l.VsockOverride = &api.VsockOverride{UDSPath: "w.sock"}
				l.ClockRealtime = true
			}
			return c.LoadSnapshot(ctx, l)
		}},
	}
	for _, call := range calls {
		if err := call.call(); err != nil {
			t.Errorf("%s: got error %v, want nil", call.name, err)
		}
	}
}

func loadSpec(t *testing.T) *swagger.Spec {
	t.Helper()
	path, err := swagger.Find(".")
	if err != nil {
		t.Skipf("skipping the contract test: %v; put Firecracker's v1.16.1 swagger file at ../shared/firecracker/%s beside the repository", err, swagger.SpecFile)
	}
	spec, err := swagger.Load(path)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	if spec.Version != "1.16.1" {
		t.Fatalf("spec version: got %q, want 1.16.1", spec.Version)
	}
	return spec
}

func TestClientRequestsMatchSpec(t *testing.T) {
	spec := loadSpec(t)
	for _, version := range []string{"1.16.1", "1.15.1", "1.12.0", "1.10.1"} {
		t.Run(version, func(t *testing.T) {
			v, err := api.ParseVersion(version)
			if err != nil {
				t.Fatal(err)
			}
			rec := &recorder{version: version}
			c := api.New("unused.sock", api.WithTransport(rec))
			exerciseClient(t, c, v)

			if len(rec.requests) < 30 {
				t.Fatalf("recorded requests: got %d, want at least 30", len(rec.requests))
			}
			for _, r := range rec.requests {
				for _, p := range spec.ValidateRequest(r.Method, r.Path, r.Body) {
					t.Errorf("%s", p)
				}
				if r.Chunked {
					t.Errorf("%s %s: got chunked transfer encoding, want Content-Length", r.Method, r.Path)
				}
				if r.ContentLength != int64(len(r.Body)) {
					t.Errorf("%s %s: Content-Length got %d, want %d", r.Method, r.Path, r.ContentLength, len(r.Body))
				}
				if r.Method == http.MethodGet && len(r.Body) != 0 {
					t.Errorf("GET %s: got a %d-byte body, want none", r.Path, len(r.Body))
				}
			}
		})
	}
}

// TestSpecValidatorRejects proves the validator used above can fail.
func TestSpecValidatorRejects(t *testing.T) {
	spec := loadSpec(t)
	tests := []struct {
		name, method, path, body string
	}{
		{"unknown field", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"bogus":1}`},
		{"missing required", "PUT", "/machine-config", `{"vcpu_count":1}`},
		{"vcpu above range", "PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":128}`},
		{"bad enum", "PUT", "/actions", `{"action_type":"Reboot"}`},
		{"cid below range", "PUT", "/vsock", `{"guest_cid":2,"uds_path":"v.sock"}`},
		{"hyphen in path id", "PUT", "/drives/root-fs", `{"drive_id":"root-fs","is_root_device":true}`},
		{"nested unknown field", "PUT", "/snapshot/load", `{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m","x":1}}`},
		{"unknown path", "PUT", "/reboot", `{}`},
		{"missing body", "PUT", "/vsock", ``},
		{"mtu below range", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"t","mtu":10}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if p := spec.ValidateRequest(tc.method, tc.path, []byte(tc.body)); len(p) == 0 {
				t.Errorf("got no problem for %s %s %s, want at least one", tc.method, tc.path, tc.body)
			}
		})
	}
}

func TestLoadBodyFollowsVersion(t *testing.T) {
	tests := []struct {
		name      string
		version   string
		load      api.SnapshotLoad
		wantErr   bool
		want      []string
		forbidden []string
	}{
		{"track dirty new name", "1.13.0", api.SnapshotLoad{TrackDirtyPages: true},
			false, []string{`"track_dirty_pages":true`}, []string{"enable_diff_snapshots"}},
		{"track dirty old name", "1.12.1", api.SnapshotLoad{TrackDirtyPages: true},
			false, []string{`"enable_diff_snapshots":true`}, []string{"track_dirty_pages"}},
		{"vsock override on 1.15", "1.15.1", api.SnapshotLoad{VsockOverride: &api.VsockOverride{UDSPath: "v"}},
			true, nil, nil},
		{"vsock override on 1.16", "1.16.1", api.SnapshotLoad{VsockOverride: &api.VsockOverride{UDSPath: "v"}},
			false, []string{`"vsock_override":{"uds_path":"v"}`}, nil},
		{"clock realtime on 1.15", "1.15.1", api.SnapshotLoad{ClockRealtime: true}, true, nil, nil},
		{"clock realtime off on 1.15", "1.15.1", api.SnapshotLoad{}, false, nil, []string{"clock_realtime", "vsock_override"}},
		{"network overrides on 1.11", "1.11.0", api.SnapshotLoad{NetworkOverrides: []api.NetworkOverride{{IfaceID: "eth0", HostDevName: "t"}}},
			true, nil, nil},
		{"network overrides on 1.12", "1.12.0", api.SnapshotLoad{NetworkOverrides: []api.NetworkOverride{{IfaceID: "eth0", HostDevName: "t"}}},
			false, []string{`"network_overrides":[{"iface_id":"eth0","host_dev_name":"t"}]`}, nil},
		{"mem backend on 1.0", "1.0.0", api.SnapshotLoad{}, true, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{version: tc.version}
			c := api.New("unused.sock", api.WithTransport(rec))
			tc.load.SnapshotPath = "s"
			tc.load.MemBackend = api.MemBackend{BackendType: api.MemBackendFile, BackendPath: "m"}
			err := c.LoadSnapshot(context.Background(), tc.load)
			if tc.wantErr {
				if err == nil {
					t.Fatal("got nil error, want an error wrapping ErrUnsupported")
				}
				if !strings.Contains(err.Error(), "needs firecracker") {
					t.Errorf("got error %q, want it to name the needed version", err)
				}
				for _, r := range rec.requests {
					if r.Path == "/snapshot/load" {
						t.Errorf("got a /snapshot/load request %s, want none after a version error", r.Body)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want nil", err)
			}
			body := lastBody(rec, "/snapshot/load")
			for _, w := range tc.want {
				if !bytes.Contains(body, []byte(w)) {
					t.Errorf("body %s: want it to contain %s", body, w)
				}
			}
			for _, f := range tc.forbidden {
				if bytes.Contains(body, []byte(f)) {
					t.Errorf("body %s: want no %s", body, f)
				}
			}
		})
	}
}

func lastBody(rec *recorder, path string) []byte {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for i := len(rec.requests) - 1; i >= 0; i-- {
		if rec.requests[i].Path == path {
			return rec.requests[i].Body
		}
	}
	return nil
}
