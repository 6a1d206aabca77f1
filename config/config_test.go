package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

func readSample(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "hearth.example.toml"))
	if err != nil {
		t.Fatalf("read sample: %v", err)
	}
	return string(data)
}

func TestSampleEqualsDefaults(t *testing.T) {
	cfg, err := Parse([]byte(readSample(t)))
	if err != nil {
		t.Fatalf("parse hearth.example.toml: %v", err)
	}
	if want := Default(); !reflect.DeepEqual(cfg, want) {
		t.Errorf("hearth.example.toml decodes to\n%+v\nwant the defaults\n%+v", cfg, want)
	}
}

// TestSampleJailerSection uncomments the sample's jailer section and checks
// that the values it shows are the defaults of a section that sets nothing.
func TestSampleJailerSection(t *testing.T) {
	sample := readSample(t)
	uncommented := regexp.MustCompile(`(?m)^#(\[firecracker\.jailer\]|[a-z_]+ = .*)$`).ReplaceAllString(sample, "$1")
	if uncommented == sample {
		t.Fatal("found no commented-out jailer section in hearth.example.toml")
	}
	cfg, err := Parse([]byte(uncommented))
	if err != nil {
		t.Fatalf("parse sample with the jailer section: %v", err)
	}
	if cfg.Firecracker.Jailer == nil {
		t.Fatal("got no jailer config, want the uncommented section")
	}
	empty, err := Parse([]byte("[firecracker.jailer]\n"))
	if err != nil {
		t.Fatalf("parse empty jailer section: %v", err)
	}
	if got, want := *cfg.Firecracker.Jailer, *empty.Firecracker.Jailer; !reflect.DeepEqual(got, want) {
		t.Errorf("sample jailer section decodes to %+v, want the defaults %+v", got, want)
	}
}

func TestParseEmptyIsDefault(t *testing.T) {
	cfg, err := Parse(nil)
	if err != nil {
		t.Fatalf("parse empty document: %v", err)
	}
	if !reflect.DeepEqual(cfg, Default()) {
		t.Errorf("got %+v, want the defaults", cfg)
	}
}

func TestParseCompatibleFile(t *testing.T) {
	doc := `
[firecracker]
binary = "/usr/bin/firecracker"
data_dir = "/var/lib/firecracker-vmm"
log_level = "Info"
socket_timeout_secs = 10

[firecracker.jailer]
binary = "/usr/bin/jailer"
uid = 1000
gid = 1000
cgroup_version = "2"
new_pid_ns = true
resource_limits = ["fsize=2048", "no-file=1024"]

[network]
bridge = "fcvmm0"
cidr = "10.20.0.0/24"
gateway = "10.20.0.1"
dns = ["192.0.2.53"]

[grpc]
unix_socket = "/run/firecracker-vmm/vmm.sock"
tcp_addr = ""

[defaults]
vcpus = 2
memory_mib = 512
kernel = "/var/lib/firecracker-vmm/kernels/vmlinux"
rootfs = "/var/lib/firecracker-vmm/images/rootfs.ext4"
boot_args = "console=ttyS0 reboot=k panic=1 pci=off"
`
	cfg, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	j := cfg.Firecracker.Jailer
	if j == nil {
		t.Fatal("got no jailer config, want one")
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"firecracker binary", cfg.Firecracker.Binary, "/usr/bin/firecracker"},
		{"socket timeout", cfg.Firecracker.SocketTimeoutSecs, int64(10)},
		{"jailer uid", j.UID, int64(1000)},
		{"jailer chroot default", j.ChrootBaseDir, "/srv/jailer"},
		{"jailer cgroup version", j.CgroupVersion, "2"},
		{"jailer limits", j.ResourceLimits, []string{"fsize=2048", "no-file=1024"}},
		{"cidr", cfg.Network.CIDR, "10.20.0.0/24"},
		{"dns", cfg.Network.DNS, []string{"192.0.2.53"}},
		{"vcpus", cfg.Defaults.VCPUs, int64(2)},
		{"kernel path", cfg.KernelPath(), "/var/lib/firecracker-vmm/kernels/vmlinux"},
		{"initramfs path", cfg.InitramfsPath(), "/var/lib/hearth/assets/initramfs.cpio"},
		{"unix socket", cfg.GRPC.UnixSocket, "/run/firecracker-vmm/vmm.sock"},
		{"socket mode kept", cfg.GRPC.SocketMode, "0660"},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
	if w := cfg.Warnings(); len(w) != 1 || !strings.Contains(w[0], "[network].bridge") {
		t.Errorf("warnings: got %q, want one about [network].bridge", w)
	}
}

func TestUnknownKeys(t *testing.T) {
	_, err := Parse([]byte("[grpc]\nunix_sock = \"/run/x.sock\"\n[limits]\nmax_vms = 3\n[bogus]\nx = 1\n"))
	if err == nil {
		t.Fatal("got no error, want one naming the unknown keys")
	}
	for _, key := range []string{"[grpc].unix_sock", "[limits].max_vms", "[bogus].x"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error %q does not name %s", err, key)
		}
	}
}

func TestSyntaxErrorNamesLine(t *testing.T) {
	_, err := Parse([]byte("[defaults]\nvcpus = \"two\"\n"))
	if err == nil {
		t.Fatal("got no error for a string in an integer key")
	}
	if !strings.Contains(err.Error(), "line 2") {
		t.Errorf("error %q does not name line 2", err)
	}
}

func TestValidation(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		key  string
		want []string // substrings of the error besides the key
	}{
		{"driver", `[hearth]
driver = "xen"`, "[hearth].driver", []string{`"xen"`, "auto, qemu, firecracker"}},
		{"relative data dir", `[hearth]
data_dir = "state"`, "[hearth].data_dir", []string{`"state"`, "absolute path"}},
		{"empty data dir", `[hearth]
data_dir = ""`, "[hearth].data_dir", []string{"required"}},
		{"log level", `[hearth]
log_level = "verbose"`, "[hearth].log_level", []string{`"verbose"`, "debug, info, warn, error"}},
		{"firecracker log level", `[firecracker]
log_level = "Loud"`, "[firecracker].log_level", []string{`"Loud"`, "Warning"}},
		{"seccomp both", `[firecracker]
no_seccomp = true
seccomp_filter = "/etc/hearth/filter.bpf"`, "[firecracker].seccomp_filter", []string{"no_seccomp"}},
		{"payload size negative", `[firecracker]
http_api_max_payload_size = -1`, "[firecracker].http_api_max_payload_size", []string{"-1", "0 to 2147483647 bytes"}},
		{"mmds negative", `[firecracker]
mmds_size_limit = -5`, "[firecracker].mmds_size_limit", []string{"-5"}},
		{"socket timeout zero", `[firecracker]
socket_timeout_secs = 0`, "[firecracker].socket_timeout_secs", []string{"= 0", "1 to 300 seconds"}},
		{"jailer uid", `[firecracker.jailer]
uid = -1`, "[firecracker.jailer].uid", []string{"-1", "0 to 4294967294"}},
		{"jailer gid", `[firecracker.jailer]
gid = 4294967295`, "[firecracker.jailer].gid", []string{"4294967295"}},
		{"jailer cgroup version", `[firecracker.jailer]
cgroup_version = "3"`, "[firecracker.jailer].cgroup_version", []string{`"3"`, "1, 2"}},
		{"jailer parent cgroup", `[firecracker.jailer]
parent_cgroup = "a/../b"`, "[firecracker.jailer].parent_cgroup", []string{`"a/../b"`, "relative"}},
		{"jailer rlimit", `[firecracker.jailer]
resource_limits = ["nproc=10"]`, "[firecracker.jailer].resource_limits", []string{`"nproc=10"`, "fsize=<bytes>"}},
		{"jailer chroot relative", `[firecracker.jailer]
chroot_base_dir = "jail"`, "[firecracker.jailer].chroot_base_dir", []string{`"jail"`}},
		{"qemu accel", `[qemu]
accel = "hvf"`, "[qemu].accel", []string{`"hvf"`, "auto, kvm, tcg"}},
		{"qemu binary", `[qemu]
binary = ""`, "[qemu].binary", []string{"PATH"}},
		{"cidr prefix", `[network]
cidr = "10.0.0.0/33"`, "[network].cidr", []string{`"10.0.0.0/33"`, "prefix length 1 to 30"}},
		{"cidr host bits", `[network]
cidr = "10.0.0.1/24"`, "[network].cidr", []string{`"10.0.0.1/24"`, "10.0.0.0/24"}},
		{"cidr ipv6", `[network]
cidr = "fd00::/64"`, "[network].cidr", []string{`"fd00::/64"`, "IPv6"}},
		{"gateway outside", `[network]
cidr = "10.0.0.0/24"
gateway = "10.0.1.1"`, "[network].gateway", []string{`"10.0.1.1"`, "outside"}},
		{"gateway broadcast", `[network]
cidr = "10.0.0.0/24"
gateway = "10.0.0.255"`, "[network].gateway", []string{"broadcast"}},
		{"dns", `[network]
dns = ["resolver.example"]`, "[network].dns", []string{`"resolver.example"`, "not an IP address"}},
		{"vcpus zero", `[defaults]
vcpus = 0`, "[defaults].vcpus", []string{"= 0", "1 to 32"}},
		{"vcpus too many", `[defaults]
vcpus = 33`, "[defaults].vcpus", []string{"33", "1 to 32"}},
		{"memory too small", `[defaults]
memory_mib = 16`, "[defaults].memory_mib", []string{"16", "64 to"}},
		{"kernel relative", `[defaults]
kernel = "vmlinux"`, "[defaults].kernel", []string{`"vmlinux"`}},
		{"socket relative", `[grpc]
unix_socket = "hearth.sock"`, "[grpc].unix_socket", []string{"absolute"}},
		{"socket too long", `[grpc]
unix_socket = "/` + strings.Repeat("s", 120) + `"`, "[grpc].unix_socket", []string{"107-byte"}},
		{"socket mode", `[grpc]
socket_mode = "0999"`, "[grpc].socket_mode", []string{`"0999"`, "octal"}},
		{"socket mode too big", `[grpc]
socket_mode = "1777"`, "[grpc].socket_mode", []string{`"1777"`}},
		{"tcp without tls", `[grpc]
tcp_addr = "127.0.0.1:7443"
token_file = "/etc/hearth/token"`, "[grpc].tcp_addr", []string{"tls_cert", "token_file"}},
		{"tcp without token", `[grpc]
tcp_addr = "127.0.0.1:7443"
tls_cert = "/etc/hearth/cert.pem"
tls_key = "/etc/hearth/key.pem"`, "[grpc].tcp_addr", []string{"token_file"}},
		{"tcp address", `[grpc]
tcp_addr = "7443"
tls_cert = "/etc/hearth/cert.pem"
tls_key = "/etc/hearth/key.pem"
token_file = "/etc/hearth/token"`, "[grpc].tcp_addr", []string{`"7443"`, "host:port"}},
		{"cert without key", `[grpc]
tls_cert = "/etc/hearth/cert.pem"`, "[grpc].tls_key", []string{"together"}},
		{"max sandboxes", `[limits]
max_sandboxes = -1`, "[limits].max_sandboxes", []string{"-1", "0 means no limit"}},
		{"max boots", `[limits]
max_concurrent_boots = -2`, "[limits].max_concurrent_boots", []string{"-2"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if err == nil {
				t.Fatalf("got no error, want one naming %s", tc.key)
			}
			var keyErr *KeyError
			if !errors.As(err, &keyErr) {
				t.Fatalf("got %T %q, want a *KeyError", err, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.key) {
				t.Errorf("error %q does not name %s", msg, tc.key)
			}
			for _, s := range tc.want {
				if !strings.Contains(msg, s) {
					t.Errorf("error %q does not contain %q", msg, s)
				}
			}
		})
	}
}

func TestValidateReportsEveryKey(t *testing.T) {
	_, err := Parse([]byte("[qemu]\naccel = \"x\"\n[defaults]\nvcpus = 0\n"))
	if err == nil {
		t.Fatal("got no error, want two")
	}
	for _, key := range []string{"[qemu].accel", "[defaults].vcpus"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error %q does not name %s", err, key)
		}
	}
}

func TestValidTCP(t *testing.T) {
	doc := `[grpc]
tcp_addr = "127.0.0.1:7443"
tls_cert = "/etc/hearth/cert.pem"
tls_key = "/etc/hearth/key.pem"
token_file = "/etc/hearth/token"`
	if _, err := Parse([]byte(doc)); err != nil {
		t.Errorf("got %v, want a TCP listener with TLS and a token accepted", err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hearth.toml")
	if err := os.WriteFile(path, []byte("[limits]\nmax_sandboxes = 4\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if cfg.Limits.MaxSandboxes != 4 {
		t.Errorf("max_sandboxes: got %d, want 4", cfg.Limits.MaxSandboxes)
	}

	_, err = Load(filepath.Join(dir, "missing.toml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("load of a missing file: got %v, want an error wrapping os.ErrNotExist", err)
	}

	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("[defaults]\nvcpus = 99\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(bad)
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "[defaults].vcpus") {
		t.Errorf("load of an invalid file: got %v, want an error naming the file and [defaults].vcpus", err)
	}
}

func TestParseSocketMode(t *testing.T) {
	tests := []struct {
		in      string
		want    uint32
		wantErr bool
	}{
		{"0660", 0o660, false},
		{"600", 0o600, false},
		{"0777", 0o777, false},
		{"", 0, true},
		{"rw-rw----", 0, true},
		{"01777", 0, true},
	}
	for _, tc := range tests {
		got, err := ParseSocketMode(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseSocketMode(%q): got %o, %v; want %o, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}
