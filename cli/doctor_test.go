package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDoctorThisHost runs hearth doctor on this host with firecracker
// hidden, so qemu must be the backend auto picks.
func TestDoctorThisHost(t *testing.T) {
	for _, bin := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s: apt-get install qemu-system-x86 qemu-utils", bin)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: without it doctor rightly reports no usable backend; run as root")
	}
	t.Setenv(firecrackerBinaryEnv, "hearth-test-no-such-firecracker")

	tests := []struct {
		name       string
		withAssets bool
		wantExit   int
		wantText   []string
	}{
		{"assets present", true, 0, []string{
			"auto: qemu (firecracker binary \"hearth-test-no-such-firecracker\" not found; using qemu)",
			"qemu: can boot sandboxes",
			"firecracker: cannot boot sandboxes",
			"MISSING  firecracker:",
			"https://github.com/firecracker-microvm/firecracker/releases",
			"vmlinux (2.0 MiB)",
			"initramfs.cpio (512 bytes)",
			"qemu-system-x86_64: /",
		}},
		{"assets missing", false, 1, []string{
			"qemu: cannot boot sandboxes",
			"MISSING  vmlinux:",
			"make assets",
			"no backend can boot a sandbox on this host",
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assets := t.TempDir()
			if tc.withAssets {
				for name, size := range map[string]int{"vmlinux": 2 << 20, "initramfs.cpio": 512, "rootfs.ext4": 4096} {
					if err := os.WriteFile(filepath.Join(assets, name), make([]byte, size), 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
			g := &globalOptions{dataDir: t.TempDir(), assets: assets}

			out, code := runDoctorCommand(t, g)
			if code != tc.wantExit {
				t.Errorf("exit code: got %d, want %d\n%s", code, tc.wantExit, out)
			}
			for _, want := range tc.wantText {
				if !strings.Contains(out, want) {
					t.Errorf("output: want it to contain %q, got:\n%s", want, out)
				}
			}

			jsonOut, jsonCode := runDoctorCommand(t, g, "--json")
			if jsonCode != tc.wantExit {
				t.Errorf("--json exit code: got %d, want %d", jsonCode, tc.wantExit)
			}
			var r doctorReport
			if err := json.Unmarshal([]byte(jsonOut), &r); err != nil {
				t.Fatalf("--json output is not JSON: %v\n%s", err, jsonOut)
			}
			if r.Auto != "qemu" {
				t.Errorf("json auto: got %q, want qemu", r.Auto)
			}
			usable := map[string]bool{}
			for _, b := range r.Backends {
				usable[b.Name] = b.Usable
			}
			if usable["qemu"] != tc.withAssets {
				t.Errorf("json qemu usable: got %v, want %v", usable["qemu"], tc.withAssets)
			}
			if usable["firecracker"] {
				t.Errorf("json firecracker usable: got true, want false without its binary")
			}
		})
	}
}

// runDoctorCommand runs hearth doctor with args and returns its output
// and exit code.
func runDoctorCommand(t *testing.T, g *globalOptions, args ...string) (string, int) {
	t.Helper()
	cmd := newDoctorCommand(g)
	// The root command silences these for every verb.
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	var exit exitCodeError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &exit):
		return out.String(), exit.code
	default:
		t.Fatalf("doctor %v: %v", args, err)
		return "", 0
	}
}

func TestNewDriverSelection(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("needs qemu-system-x86_64: apt-get install qemu-system-x86 qemu-utils")
	}
	t.Setenv(firecrackerBinaryEnv, "hearth-test-no-such-firecracker")
	tests := []struct {
		name     string
		driver   string
		wantName string
		wantErr  string
	}{
		{"auto without firecracker", "auto", "qemu", ""},
		{"qemu", "qemu", "qemu", ""},
		{"firecracker missing", "firecracker", "", `"hearth-test-no-such-firecracker"`},
		{"unknown", "xen", "", "use auto, qemu or firecracker"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := newDriver(tc.driver)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("newDriver(%q): got error %v, want one containing %s", tc.driver, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("newDriver(%q): %v", tc.driver, err)
			}
			if d.Name() != tc.wantName {
				t.Errorf("newDriver(%q): got driver %s, want %s", tc.driver, d.Name(), tc.wantName)
			}
		})
	}
}
