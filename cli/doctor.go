package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hearthvm/hearth/vmm/firecracker"
	"github.com/hearthvm/hearth/vmm/qemu"
)

// firecrackerBinaryEnv overrides the firecracker binary that --driver
// auto and firecracker use.
const firecrackerBinaryEnv = "HEARTH_FIRECRACKER"

// versionTimeout bounds one `<binary> --version` run.
const versionTimeout = 5 * time.Second

// Install hints for what doctor finds missing.
const (
	fixRoot        = "run hearth as root (sudo): it creates TAP devices and writes its data directory"
	fixQEMU        = "apt-get install qemu-system-x86 (or run scripts/install-deps)"
	fixQEMUImg     = "apt-get install qemu-utils (or run scripts/install-deps)"
	fixFirecracker = "Firecracker has no Debian package: download firecracker-<version>-x86_64.tgz from " +
		"https://github.com/firecracker-microvm/firecracker/releases, install its firecracker binary " +
		"into PATH, or set " + firecrackerBinaryEnv + " to its path"
	fixJailer = "the jailer comes in the same Firecracker release archive as firecracker: install its jailer binary into PATH " +
		"(needed only when the daemon's [firecracker.jailer] section is set)"
	fixKVM = "firecracker needs a KVM that runs standard x86-64 guests: enable VT-x or AMD-V (or nested " +
		"virtualization on a cloud VM), load kvm_intel or kvm_amd, and check /dev/kvm; until then use --driver qemu"
	fixTUN    = "modprobe tun (needed for network mode tap; --network none works without it)"
	fixAssets = "build the boot assets with `make assets` (scripts/build-assets), or point --assets or HEARTH_ASSETS at them"
)

// firecrackerBinary returns the firecracker binary --driver auto and
// firecracker use: HEARTH_FIRECRACKER, else "firecracker" from PATH.
func firecrackerBinary() string {
	return envOr(firecrackerBinaryEnv, "firecracker")
}

// doctorCheck is one thing doctor looked at.
type doctorCheck struct {
	Name string `json:"name"`
	OK   bool   `json:"ok"`
	// Detail is the path, version, size or probe result when OK, and what
	// is wrong otherwise.
	Detail string `json:"detail"`
	// Fix is what to install or change, empty when OK.
	Fix string `json:"fix,omitempty"`
	// Optional checks do not decide whether a backend can boot.
	Optional bool `json:"optional,omitempty"`
}

// doctorBackend is the verdict for one VMM driver.
type doctorBackend struct {
	Name string `json:"name"`
	// Usable reports that every required check of the backend, the host
	// checks and the boot assets passed.
	Usable bool          `json:"usable"`
	Checks []doctorCheck `json:"checks"`
}

// doctorReport is the whole output of hearth doctor.
type doctorReport struct {
	// Auto is the driver --driver auto picks, and AutoReason why.
	Auto       string          `json:"auto"`
	AutoReason string          `json:"auto_reason"`
	Host       []doctorCheck   `json:"host"`
	Assets     []doctorCheck   `json:"assets"`
	AssetsDir  string          `json:"assets_dir"`
	Backends   []doctorBackend `json:"backends"`
}

// usable reports whether at least one backend can boot a sandbox.
func (r doctorReport) usable() bool {
	for _, b := range r.Backends {
		if b.Usable {
			return true
		}
	}
	return false
}

type doctorOptions struct {
	json     bool
	probeKVM bool
}

func newDoctorCommand(g *globalOptions) *cobra.Command {
	var o doctorOptions
	cmd := &cobra.Command{
		Use:   "doctor [--json]",
		Short: "Check which VMM backends can run sandboxes on this host",
		Long: `Check this host for what each VMM backend needs: the QEMU and Firecracker
binaries with their versions, /dev/kvm and whether KVM runs a standard
guest, /dev/net/tun, root, and the boot assets. Print which backend
--driver auto would use and why, and what to install or fix for each
missing piece. Exit 0 when at least one backend can boot a sandbox, 1
otherwise.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			report := runDoctor(cmd.Context(), g, o)
			if err := writeDoctorReport(cmd.OutOrStdout(), report, o.json); err != nil {
				return err
			}
			if !report.usable() {
				return exitCodeError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&o.json, "json", false, "print the report as JSON")
	cmd.Flags().BoolVar(&o.probeKVM, "probe-kvm", false,
		"boot the assets under KVM with QEMU now (up to 15 s) instead of reading the cached probe result")
	return cmd
}

func runDoctor(ctx context.Context, g *globalOptions, o doctorOptions) doctorReport {
	assets := g.assets
	if assets == "" {
		assets = filepath.Join(g.dataDir, "assets")
	}
	sel := firecracker.SelectDriver(firecrackerBinary(), nil)
	r := doctorReport{
		Auto:       sel.Driver,
		AutoReason: sel.Reason,
		Host:       []doctorCheck{checkRoot(), checkDevice("/dev/net/tun", fixTUN, true)},
		Assets:     checkAssetFiles(assets),
		AssetsDir:  assets,
	}
	common := allOK(r.Host) && allOK(r.Assets)
	r.Backends = []doctorBackend{
		qemuBackend(ctx, assets, o.probeKVM, common),
		firecrackerBackend(ctx, common),
	}
	return r
}

// allOK reports whether every required check passed.
func allOK(checks []doctorCheck) bool {
	for _, c := range checks {
		if !c.OK && !c.Optional {
			return false
		}
	}
	return true
}

func checkRoot() doctorCheck {
	c := doctorCheck{Name: "root", OK: os.Geteuid() == 0}
	if c.OK {
		c.Detail = "running as root"
	} else {
		c.Detail, c.Fix = fmt.Sprintf("running as uid %d", os.Geteuid()), fixRoot
	}
	return c
}

func checkDevice(path, fix string, optional bool) doctorCheck {
	c := doctorCheck{Name: path, Optional: optional}
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		c.Detail, c.Fix = err.Error(), fix
	case fi.Mode()&os.ModeCharDevice == 0:
		c.Detail, c.Fix = "not a character device", fix
	default:
		c.OK, c.Detail = true, "present"
	}
	return c
}

func checkAssetFiles(dir string) []doctorCheck {
	var checks []doctorCheck
	for _, name := range []string{"vmlinux", "initramfs.cpio", "rootfs.ext4"} {
		path := filepath.Join(dir, name)
		c := doctorCheck{Name: name}
		fi, err := os.Stat(path)
		switch {
		case err != nil:
			c.Detail, c.Fix = err.Error(), fixAssets
		case !fi.Mode().IsRegular() || fi.Size() == 0:
			c.Detail, c.Fix = fmt.Sprintf("%s is empty or not a regular file", path), fixAssets
		default:
			c.OK, c.Detail = true, fmt.Sprintf("%s (%s)", path, formatSize(fi.Size()))
		}
		checks = append(checks, c)
	}
	return checks
}

func formatSize(n int64) string {
	const mib = 1 << 20
	if n < mib {
		return fmt.Sprintf("%d bytes", n)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/mib)
}

// checkBinary looks name up in PATH and reads its version.
func checkBinary(ctx context.Context, label, name, fix string) doctorCheck {
	c := doctorCheck{Name: label}
	path, err := exec.LookPath(name)
	if err != nil {
		c.Detail, c.Fix = fmt.Sprintf("%q not found in PATH", name), fix
		return c
	}
	c.OK, c.Detail = true, path
	if v := binaryVersion(ctx, path); v != "" {
		c.Detail += ": " + v
	}
	return c
}

// binaryVersion returns the first line `path --version` prints, or "".
func binaryVersion(ctx context.Context, path string) string {
	ctx, cancel := context.WithTimeout(ctx, versionTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return ""
	}
	line, _, _ := bytes.Cut(bytes.TrimSpace(out), []byte("\n"))
	return string(line)
}

func qemuBackend(ctx context.Context, assets string, probe, common bool) doctorBackend {
	b := doctorBackend{Name: "qemu", Checks: []doctorCheck{
		checkBinary(ctx, "qemu-system-x86_64", qemu.DefaultQEMU, fixQEMU),
		checkBinary(ctx, "qemu-img", qemu.DefaultQEMUImg, fixQEMUImg),
		checkDevice("/dev/kvm", "without KVM, qemu runs guests in TCG software emulation (slow but working)", true),
	}}
	b.Usable = common && allOK(b.Checks)
	if b.Checks[0].OK {
		b.Checks = append(b.Checks, qemuKVMCheck(ctx, assets, probe))
	}
	return b
}

// qemuKVMCheck reports whether QEMU boots the guest under KVM: from the
// qemu driver's cached probe result, or by probing now. Either way the
// outcome is optional, because QEMU falls back to TCG.
func qemuKVMCheck(ctx context.Context, assets string, probe bool) doctorCheck {
	c := doctorCheck{Name: "KVM probe (qemu)", Optional: true}
	kernel, initrd := filepath.Join(assets, "vmlinux"), filepath.Join(assets, "initramfs.cpio")
	if !probe {
		c.OK, c.Detail = readQEMUProbeCache(qemu.DefaultProbeCache, kernel, initrd)
		if !c.OK {
			c.Fix = "qemu uses TCG software emulation; run hearth doctor --probe-kvm to probe again"
		}
		return c
	}
	d, err := qemu.New(qemu.Config{})
	if err != nil {
		c.Detail = err.Error()
		return c
	}
	res, err := d.ProbeKVM(ctx, kernel, initrd)
	if err != nil {
		c.Detail, c.Fix = fmt.Sprintf("probe could not run: %v", err), fixAssets
		return c
	}
	c.OK, c.Detail = res.KVM, fmt.Sprintf("probed now in %s: %s", res.Duration.Round(time.Millisecond), res.Reason)
	if !res.KVM {
		c.Fix = "qemu uses TCG software emulation (slow but working)"
	}
	return c
}

// qemuProbeRecord is the part of the qemu driver's probe cache file that
// doctor reports.
//
// NOTE: this mirrors the qemu package's private cache format; an exported
// reader in package qemu would keep the two from drifting apart.
type qemuProbeRecord struct {
	Key struct {
		Kernel qemuProbeStamp `json:"kernel"`
		Initrd qemuProbeStamp `json:"initrd"`
	} `json:"key"`
	KVM      bool      `json:"kvm"`
	Reason   string    `json:"reason"`
	ProbedAt time.Time `json:"probed_at"`
}

type qemuProbeStamp struct {
	Path    string    `json:"path"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mtime"`
}

// readQEMUProbeCache returns whether the cached probe found KVM usable
// for these assets, and a description of the cached result.
func readQEMUProbeCache(path, kernel, initrd string) (bool, string) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Sprintf("no cached probe result in %s: the first sandbox probes (up to 15 s)", path)
	}
	var rec qemuProbeRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return false, fmt.Sprintf("unreadable probe cache %s: %v", path, err)
	}
	if !stampMatches(rec.Key.Kernel, kernel) || !stampMatches(rec.Key.Initrd, initrd) {
		return false, fmt.Sprintf("cached probe result in %s is for other boot assets: the first sandbox probes again", path)
	}
	verdict := "KVM unusable"
	if rec.KVM {
		verdict = "KVM usable"
	}
	return rec.KVM, fmt.Sprintf("%s (cached %s): %s", verdict, rec.ProbedAt.Local().Format(time.DateTime), rec.Reason)
}

func stampMatches(s qemuProbeStamp, path string) bool {
	abs, err := filepath.Abs(path)
	if err != nil || abs != s.Path {
		return false
	}
	fi, err := os.Stat(abs)
	return err == nil && fi.Size() == s.Size && fi.ModTime().Equal(s.ModTime)
}

func firecrackerBackend(ctx context.Context, common bool) doctorBackend {
	fc := checkBinary(ctx, "firecracker", firecrackerBinary(), fixFirecracker)
	jailer := checkBinary(ctx, "jailer", "jailer", fixJailer)
	jailer.Optional = true
	kvm := doctorCheck{Name: "KVM (firecracker CPU feature probe)"}
	if err := firecracker.ProbeKVM(); err != nil {
		kvm.Detail, kvm.Fix = err.Error(), fixKVM
	} else {
		kvm.OK, kvm.Detail = true, "/dev/kvm creates VMs and offers SSE3, CMPXCHG16B and long mode"
	}
	b := doctorBackend{Name: "firecracker", Checks: []doctorCheck{fc, jailer, kvm}}
	b.Usable = common && allOK(b.Checks)
	return b
}

func writeDoctorReport(w io.Writer, r doctorReport, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "auto: %s (%s)\n", r.Auto, r.AutoReason)
	writeChecks(bw, "host", r.Host)
	writeChecks(bw, "boot assets in "+r.AssetsDir, r.Assets)
	for _, b := range r.Backends {
		verdict := "can boot sandboxes"
		if !b.Usable {
			verdict = "cannot boot sandboxes"
		}
		writeChecks(bw, fmt.Sprintf("%s: %s", b.Name, verdict), b.Checks)
	}
	if !r.usable() {
		fmt.Fprintln(bw, "\nno backend can boot a sandbox on this host; apply the fixes above")
	}
	return bw.Flush()
}

func writeChecks(w io.Writer, title string, checks []doctorCheck) {
	fmt.Fprintf(w, "\n%s\n", title)
	for _, c := range checks {
		mark := "ok"
		switch {
		case !c.OK && c.Optional:
			mark = "--"
		case !c.OK:
			mark = "MISSING"
		}
		fmt.Fprintf(w, "  %-8s %s: %s\n", mark, c.Name, c.Detail)
		if c.Fix != "" {
			fmt.Fprintf(w, "           fix: %s\n", strings.TrimSpace(c.Fix))
		}
	}
}
