package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/vmm"
)

// probeMethod names how the probe decides, and is part of the cache key,
// so a result found by an older method is not reused.
const probeMethod = "boot-to-init-or-ping/1"

// probeBootArgs leave out "quiet" so the kernel prints the line that
// probeInitLine matches.
const probeBootArgs = "console=ttyS0 panic=-1 cryptomgr.notests"

// probeInitLine is the console line the kernel prints when it starts the
// initramfs's /init.
const probeInitLine = "Run /init as init process"

// probeMemoryMiB is the probe guest's memory.
const probeMemoryMiB = 256

// ProbeResult is the outcome of a KVM probe.
type ProbeResult struct {
	// KVM reports whether KVM booted the guest.
	KVM bool
	// Reason explains the outcome in words for a person.
	Reason string
	// Duration is how long the probe boot ran.
	Duration time.Duration
	// Cached reports that the result came from the cache file.
	Cached bool
}

// probeKey identifies what a probe result depends on.
type probeKey struct {
	Method     string    `json:"method"`
	HostKernel string    `json:"host_kernel"`
	QEMU       string    `json:"qemu"`
	Kernel     fileStamp `json:"kernel"`
	Initrd     fileStamp `json:"initrd"`
}

// fileStamp identifies a file's content by its size and modification
// time, which is enough to notice a rebuilt asset without hashing it.
type fileStamp struct {
	Path    string    `json:"path"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mtime"`
}

// probeRecord is the cache file's content.
type probeRecord struct {
	Key        probeKey  `json:"key"`
	KVM        bool      `json:"kvm"`
	Reason     string    `json:"reason"`
	ProbedAt   time.Time `json:"probed_at"`
	DurationMS int64     `json:"duration_ms"`
}

// resolveAccel returns the accelerator for the next machine. With accel
// "auto" it decides once per driver, from the cache file or by probing,
// and logs one warning when it falls back to TCG.
func (d *Driver) resolveAccel(ctx context.Context, kernel, initrd string) (Accel, error) {
	if d.cfg.Accel != AccelAuto {
		return d.cfg.Accel, nil
	}

	select {
	case d.accelLock <- struct{}{}:
	case <-ctx.Done():
		return "", fmt.Errorf("wait for the kvm probe: %w", ctx.Err())
	}
	defer func() { <-d.accelLock }()

	if d.accel != "" {
		return d.accel, nil
	}
	res, err := d.probeCached(ctx, kernel, initrd)
	if err != nil {
		return "", err
	}
	if res.KVM {
		d.accel = AccelKVM
		d.log.Info("using kvm", "reason", res.Reason, "cached", res.Cached)
	} else {
		d.accel = AccelTCG
		d.log.Warn("kvm is unusable; using tcg software emulation, which is much slower",
			"reason", res.Reason, "cached", res.Cached)
	}
	return d.accel, nil
}

// probeCached returns the cached probe result for this host, QEMU and
// guest, or probes and caches the result. The caller holds accelLock.
func (d *Driver) probeCached(ctx context.Context, kernel, initrd string) (ProbeResult, error) {
	// An unopenable /dev/kvm is decided at once and not cached, because
	// its permissions can change without anything in the key changing.
	if err := openKVM(); err != nil {
		return ProbeResult{Reason: fmt.Sprintf("open /dev/kvm: %v", err)}, nil
	}

	key, err := d.probeKey(ctx, kernel, initrd)
	if err != nil {
		return ProbeResult{}, err
	}
	if rec, err := readProbeCache(d.cfg.ProbeCache); err == nil && rec.Key == key {
		return ProbeResult{
			KVM:      rec.KVM,
			Reason:   rec.Reason,
			Duration: time.Duration(rec.DurationMS) * time.Millisecond,
			Cached:   true,
		}, nil
	}
	return d.probeAndStore(ctx, key)
}

// ProbeKVM boots kernel and initrd under KVM, ignoring the cache, and
// stores the result in the cache file. The probe passes when the kernel
// starts /init or the agent acknowledges a PING on its control port within the
// configured timeout (default 15 s). A failed probe is a result, not an
// error; errors are for probes that could not run (missing files, ctx
// ended).
//
// A probe is needed because an incomplete KVM does not fail fast: on a
// nested KVM without some CPU features QEMU starts, the guest kernel
// crawls, and QEMU stops with an emulation failure only after half a
// minute.
func (d *Driver) ProbeKVM(ctx context.Context, kernel, initrd string) (ProbeResult, error) {
	if err := checkAsset("kernel", kernel); err != nil {
		return ProbeResult{}, err
	}
	if err := checkAsset("initramfs", initrd); err != nil {
		return ProbeResult{}, err
	}

	select {
	case d.accelLock <- struct{}{}:
	case <-ctx.Done():
		return ProbeResult{}, fmt.Errorf("wait for the kvm probe: %w", ctx.Err())
	}
	defer func() { <-d.accelLock }()

	if err := openKVM(); err != nil {
		return ProbeResult{Reason: fmt.Sprintf("open /dev/kvm: %v", err)}, nil
	}
	key, err := d.probeKey(ctx, kernel, initrd)
	if err != nil {
		return ProbeResult{}, err
	}
	return d.probeAndStore(ctx, key)
}

func (d *Driver) probeAndStore(ctx context.Context, key probeKey) (ProbeResult, error) {
	res, err := d.probeBoot(ctx, key.Kernel.Path, key.Initrd.Path)
	if err != nil {
		return ProbeResult{}, err
	}

	rec := probeRecord{
		Key:        key,
		KVM:        res.KVM,
		Reason:     res.Reason,
		ProbedAt:   time.Now().UTC(),
		DurationMS: res.Duration.Milliseconds(),
	}
	if err := writeProbeCache(d.cfg.ProbeCache, rec); err != nil {
		d.log.Warn("cannot store the kvm probe result; the probe will run again on the next start",
			"file", d.cfg.ProbeCache, "error", err)
	}
	return res, nil
}

func (d *Driver) probeKey(ctx context.Context, kernel, initrd string) (probeKey, error) {
	release, err := hostKernelRelease()
	if err != nil {
		return probeKey{}, err
	}
	version, err := d.qemuVersion(ctx)
	if err != nil {
		return probeKey{}, err
	}
	k, err := stampFile(kernel)
	if err != nil {
		return probeKey{}, err
	}
	i, err := stampFile(initrd)
	if err != nil {
		return probeKey{}, err
	}
	return probeKey{Method: probeMethod, HostKernel: release, QEMU: version, Kernel: k, Initrd: i}, nil
}

func stampFile(path string) (fileStamp, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fileStamp{}, err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return fileStamp{}, fmt.Errorf("stat %s: %w", abs, err)
	}
	return fileStamp{Path: abs, Size: st.Size(), ModTime: st.ModTime().UTC()}, nil
}

// probeBoot boots the guest under KVM without disk or network and waits
// for the kernel to start /init or for the agent to acknowledge a PING. The
// console line decides as soon as the kernel reaches /init, so the probe
// does not depend on the agent transport; a PING counts as well, so the
// probe also passes with a kernel whose console is silent.
func (d *Driver) probeBoot(ctx context.Context, kernel, initrd string) (ProbeResult, error) {
	dir, err := os.MkdirTemp(d.probeParent, "hearth-kvm-probe-")
	if err != nil {
		return ProbeResult{}, fmt.Errorf("kvm probe: %w", err)
	}
	defer os.RemoveAll(dir)

	d.probes++
	d.log.Info("probing kvm with a test boot", "timeout", d.cfg.ProbeTimeout, "kernel", kernel)

	l := launch{
		Spec: vmm.Spec{
			ID:        "kvm-probe",
			Dir:       dir,
			VCPUs:     1,
			MemoryMiB: probeMemoryMiB,
			Kernel:    kernel,
			Initrd:    initrd,
			BootArgs:  probeBootArgs,
			AgentArgs: []string{"hearth_init=1"},
		},
		Accel:     AccelKVM,
		AgentPort: d.cfg.AgentPort,
		Paths:     pathsIn(dir),
		ExtraArgs: d.cfg.ExtraArgs,
	}

	probeCtx, cancel := context.WithTimeout(ctx, d.cfg.ProbeTimeout)
	defer cancel()
	began := time.Now()

	m, err := d.start(probeCtx, l)
	if err != nil {
		if ctx.Err() != nil {
			return ProbeResult{}, fmt.Errorf("kvm probe: %w", ctx.Err())
		}
		return ProbeResult{Reason: fmt.Sprintf("qemu did not start under kvm: %v", err), Duration: time.Since(began)}, nil
	}
	defer m.Kill()

	reason, ok := waitGuestUp(probeCtx, m)
	elapsed := time.Since(began)
	if !ok && ctx.Err() != nil {
		return ProbeResult{}, fmt.Errorf("kvm probe: %w", ctx.Err())
	}
	if ok {
		reason = fmt.Sprintf("%s under kvm after %v", reason, elapsed.Round(time.Millisecond))
	}
	return ProbeResult{KVM: ok, Reason: reason, Duration: elapsed}, nil
}

// waitGuestUp waits until the console shows the kernel starting /init or
// the agent acknowledges a PING. It returns what it saw, or why it gave up.
func waitGuestUp(ctx context.Context, m *Machine) (string, bool) {
	pinged := make(chan struct{})
	pingCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for pingCtx.Err() == nil {
			if pingAgent(pingCtx, m) == nil {
				close(pinged)
				return
			}
			select {
			case <-pingCtx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()

	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if consoleContains(m.ConsolePath(), probeInitLine) {
			return "the guest kernel started /init", true
		}
		select {
		case <-pinged:
			return "the agent acknowledged a PING", true
		case <-m.Done():
			return fmt.Sprintf("qemu exited before the guest started /init: %v; console ends with: %s",
				m.Wait(context.Background()), readTail(m.ConsolePath(), 512)), false
		case <-ctx.Done():
			return fmt.Sprintf("the guest did not start /init within the probe timeout; console ends with: %s",
				readTail(m.ConsolePath(), 512)), false
		case <-tick.C:
		}
	}
}

func consoleContains(path, text string) bool {
	b, err := os.ReadFile(path)
	return err == nil && bytes.Contains(b, []byte(text))
}

// pingAgent sends a PING on the agent's control port and waits for ACK.
func pingAgent(ctx context.Context, m *Machine) error {
	conn, err := m.DialAgent(ctx, agentproto.PortControl)
	if err != nil {
		return err
	}
	defer conn.Close()

	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if err := agentproto.WriteFrame(conn, agentproto.TypePing, nil); err != nil {
		return fmt.Errorf("send PING: %w", err)
	}
	f, err := agentproto.ReadFrame(conn)
	if err != nil {
		return fmt.Errorf("read PING response: %w", err)
	}
	if f.Type != agentproto.TypeAck {
		return fmt.Errorf("agent responded to PING with %s, want ACK", f.Type)
	}
	return nil
}

func readProbeCache(path string) (probeRecord, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return probeRecord{}, err
	}
	var rec probeRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return probeRecord{}, fmt.Errorf("parse %s: %w", path, err)
	}
	return rec, nil
}

// writeProbeCache replaces the cache file atomically, so a concurrent
// reader sees the old or the new record, never a partial one.
func writeProbeCache(path string, rec probeRecord) (err error) {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
