package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
)

// DescribeInstance returns GET /: the instance ID, state and version.
func (c *Client) DescribeInstance(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	err := c.do(ctx, c.timeout, http.MethodGet, "/", nil, &info)
	return info, err
}

// Version returns the binary's version from GET /version. The first
// successful answer is cached, since a process never changes version.
func (c *Client) Version(ctx context.Context) (Version, error) {
	c.mu.Lock()
	v := c.version
	c.mu.Unlock()
	if !v.IsZero() {
		return v, nil
	}

	var body firecrackerVersion
	if err := c.do(ctx, c.timeout, http.MethodGet, "/version", nil, &body); err != nil {
		return Version{}, err
	}
	v, err := ParseVersion(body.FirecrackerVersion)
	if err != nil {
		return Version{}, err
	}
	c.mu.Lock()
	c.version = v
	c.mu.Unlock()
	return v, nil
}

// PutMachineConfig replaces the machine configuration (before boot).
func (c *Client) PutMachineConfig(ctx context.Context, mc MachineConfig) error {
	return c.do(ctx, c.timeout, http.MethodPut, "/machine-config", mc, nil)
}

// PatchMachineConfig changes the fields set in p (before boot).
func (c *Client) PatchMachineConfig(ctx context.Context, p MachineConfigPatch) error {
	if p == (MachineConfigPatch{}) {
		return errors.New("patch machine config: no field set; firecracker rejects an empty PATCH")
	}
	return c.do(ctx, c.timeout, http.MethodPatch, "/machine-config", p, nil)
}

// GetMachineConfig returns the machine configuration.
func (c *Client) GetMachineConfig(ctx context.Context) (MachineConfig, error) {
	var mc MachineConfig
	err := c.do(ctx, c.timeout, http.MethodGet, "/machine-config", nil, &mc)
	return mc, err
}

// PutBootSource sets the kernel, initrd and command line (before boot).
func (c *Client) PutBootSource(ctx context.Context, bs BootSource) error {
	return c.do(ctx, c.timeout, http.MethodPut, "/boot-source", bs, nil)
}

// PutDrive adds or replaces a drive (before boot).
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	if err := checkResourceID("drive", d.DriveID); err != nil {
		return err
	}
	return c.do(ctx, c.timeout, http.MethodPut, "/drives/"+d.DriveID, d, nil)
}

// PatchDrive repoints a drive or changes its rate limiter (after boot or
// load).
func (c *Client) PatchDrive(ctx context.Context, p DrivePatch) error {
	if err := checkResourceID("drive", p.DriveID); err != nil {
		return err
	}
	return c.do(ctx, c.timeout, http.MethodPatch, "/drives/"+p.DriveID, p, nil)
}

// PutNetworkInterface adds a network interface (before boot). A non-zero
// MTU needs Firecracker 1.16.0.
func (c *Client) PutNetworkInterface(ctx context.Context, ni NetworkInterface) error {
	if err := checkResourceID("network interface", ni.IfaceID); err != nil {
		return err
	}
	body := networkInterfaceBody{NetworkInterface: ni}
	if ni.MTU != 0 {
		v, err := c.Version(ctx)
		if err != nil {
			return err
		}
		if err := requireVersion(v, VersionInterfaceMTU, "network interface mtu"); err != nil {
			return err
		}
		mtu := ni.MTU
		body.MTU = &mtu
	}
	return c.do(ctx, c.timeout, http.MethodPut, "/network-interfaces/"+ni.IfaceID, body, nil)
}

// PatchNetworkInterface changes an interface's rate limiters (after boot).
func (c *Client) PatchNetworkInterface(ctx context.Context, p NetworkInterfacePatch) error {
	if err := checkResourceID("network interface", p.IfaceID); err != nil {
		return err
	}
	return c.do(ctx, c.timeout, http.MethodPatch, "/network-interfaces/"+p.IfaceID, p, nil)
}

// PutVsock sets the vsock device (before boot). Firecracker binds UDSPath
// during this call.
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.do(ctx, c.timeout, http.MethodPut, "/vsock", v, nil)
}

// PutBalloon adds or replaces the balloon device (before boot).
func (c *Client) PutBalloon(ctx context.Context, b Balloon) error {
	return c.do(ctx, c.timeout, http.MethodPut, "/balloon", b, nil)
}

// PatchBalloon changes the balloon's target size (after boot).
func (c *Client) PatchBalloon(ctx context.Context, u BalloonUpdate) error {
	return c.do(ctx, c.timeout, http.MethodPatch, "/balloon", u, nil)
}

// GetBalloon returns the balloon configuration.
func (c *Client) GetBalloon(ctx context.Context) (Balloon, error) {
	var b Balloon
	err := c.do(ctx, c.timeout, http.MethodGet, "/balloon", nil, &b)
	return b, err
}

// GetBalloonStats returns the balloon statistics, which must have been
// enabled before boot.
func (c *Client) GetBalloonStats(ctx context.Context) (BalloonStats, error) {
	var s BalloonStats
	err := c.do(ctx, c.timeout, http.MethodGet, "/balloon/statistics", nil, &s)
	return s, err
}

// PatchBalloonStats changes the statistics polling interval (after boot).
func (c *Client) PatchBalloonStats(ctx context.Context, u BalloonStatsUpdate) error {
	return c.do(ctx, c.timeout, http.MethodPatch, "/balloon/statistics", u, nil)
}

// PutEntropy adds the virtio-rng device (before boot).
func (c *Client) PutEntropy(ctx context.Context, e Entropy) error {
	return c.do(ctx, c.timeout, http.MethodPut, "/entropy", e, nil)
}

// PutLogger sets up the logger (before boot or load).
func (c *Client) PutLogger(ctx context.Context, l Logger) error {
	return c.do(ctx, c.timeout, http.MethodPut, "/logger", l, nil)
}

// PutMetrics sets up metrics, once per process (before boot or load).
func (c *Client) PutMetrics(ctx context.Context, m Metrics) error {
	return c.do(ctx, c.timeout, http.MethodPut, "/metrics", m, nil)
}

// PutMMDS replaces the MMDS data store with data, a JSON object.
func (c *Client) PutMMDS(ctx context.Context, data any) error {
	return c.do(ctx, c.timeout, http.MethodPut, "/mmds", data, nil)
}

// PatchMMDS merges patch, a JSON object, into the MMDS data store.
func (c *Client) PatchMMDS(ctx context.Context, patch any) error {
	return c.do(ctx, c.timeout, http.MethodPatch, "/mmds", patch, nil)
}

// GetMMDS decodes the MMDS data store into out.
func (c *Client) GetMMDS(ctx context.Context, out any) error {
	return c.do(ctx, c.timeout, http.MethodGet, "/mmds", nil, out)
}

// PutMMDSConfig configures MMDS (before boot); the interfaces it names
// must exist.
func (c *Client) PutMMDSConfig(ctx context.Context, cfg MMDSConfig) error {
	if len(cfg.NetworkInterfaces) == 0 {
		return errors.New("put mmds config: network_interfaces is empty; name at least one interface")
	}
	return c.do(ctx, c.timeout, http.MethodPut, "/mmds/config", cfg, nil)
}

func (c *Client) action(ctx context.Context, action string) error {
	return c.do(ctx, c.timeout, http.MethodPut, "/actions", instanceAction{ActionType: action}, nil)
}

// InstanceStart boots the configured VM. It succeeds only once.
func (c *Client) InstanceStart(ctx context.Context) error {
	return c.action(ctx, ActionInstanceStart)
}

// SendCtrlAltDel injects Ctrl+Alt+Del (x86 only, after boot). Success
// means the keys were injected, not that the guest shut down.
func (c *Client) SendCtrlAltDel(ctx context.Context) error {
	return c.action(ctx, ActionSendCtrlAltDel)
}

// FlushMetrics writes the metrics now (after boot).
func (c *Client) FlushMetrics(ctx context.Context) error {
	return c.action(ctx, ActionFlushMetrics)
}

// Pause pauses the vCPUs (after boot). Repeating it is harmless.
func (c *Client) Pause(ctx context.Context) error {
	return c.do(ctx, c.timeout, http.MethodPatch, "/vm", vmState{State: "Paused"}, nil)
}

// Resume resumes the vCPUs (after boot). Every vsock connection must be
// dialled again afterwards.
func (c *Client) Resume(ctx context.Context) error {
	return c.do(ctx, c.timeout, http.MethodPatch, "/vm", vmState{State: "Resumed"}, nil)
}

// CreateSnapshot writes the VM state and memory; the VM must be paused.
func (c *Client) CreateSnapshot(ctx context.Context, s SnapshotCreate) error {
	return c.do(ctx, c.snapshotTimeout, http.MethodPut, "/snapshot/create", s, nil)
}

// LoadSnapshot restores a VM into this fresh process. Before it only the
// logger and metrics may be configured. If it fails, the process cannot
// be used again: kill it and load in a new one.
func (c *Client) LoadSnapshot(ctx context.Context, s SnapshotLoad) error {
	v, err := c.Version(ctx)
	if err != nil {
		return err
	}
	body, err := buildLoadBody(v, s)
	if err != nil {
		return fmt.Errorf("load snapshot %q: %w", s.SnapshotPath, err)
	}
	return c.do(ctx, c.snapshotTimeout, http.MethodPut, "/snapshot/load", body, nil)
}

func buildLoadBody(v Version, s SnapshotLoad) (snapshotLoadBody, error) {
	body := snapshotLoadBody{SnapshotPath: s.SnapshotPath, MemBackend: s.MemBackend}
	if err := requireVersion(v, VersionMemBackend, "mem_backend"); err != nil {
		return body, err
	}
	if s.TrackDirtyPages {
		on := true
		if v.AtLeast(VersionLoadTrackDirty) {
			body.TrackDirtyPages = &on
		} else {
			body.EnableDiffSnapshots = &on
		}
	}
	if s.ResumeVM {
		on := true
		body.ResumeVM = &on
	}
	if len(s.NetworkOverrides) > 0 {
		if err := requireVersion(v, VersionNetworkOverrides, "network_overrides"); err != nil {
			return body, err
		}
		for _, o := range s.NetworkOverrides {
			if err := checkResourceID("network interface", o.IfaceID); err != nil {
				return body, err
			}
		}
		body.NetworkOverrides = s.NetworkOverrides
	}
	if s.VsockOverride != nil {
		if err := requireVersion(v, VersionVsockOverride, "vsock_override"); err != nil {
			return body, err
		}
		body.VsockOverride = s.VsockOverride
	}
	if s.ClockRealtime {
		if err := requireVersion(v, VersionClockRealtime, "clock_realtime"); err != nil {
			return body, err
		}
		on := true
		body.ClockRealtime = &on
	}
	return body, nil
}
