package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRunPrintsGuestKernel(t *testing.T) {
	e := newEnv(t)
	res := e.hearth(testContext(t), "run", "--", "cat", "/proc/version")
	if res.code != 0 {
		t.Fatalf("exit code: got %d, want 0; stderr:\n%s", res.code, res.stderr)
	}
	if !strings.HasPrefix(res.stdout, "Linux version 6.1.") {
		t.Errorf("stdout: got %q, want the guest's Linux 6.1 version", res.stdout)
	}
	if !strings.Contains(res.stdout, "Debian") {
		t.Errorf("stdout: got %q, want a Debian kernel", res.stdout)
	}
	host, err := os.ReadFile("/proc/version")
	if err != nil {
		t.Fatal(err)
	}
	if res.stdout == string(host) {
		t.Errorf("stdout is the host's /proc/version: %q", res.stdout)
	}
	e.assertClean()
}

func TestRunStreamsAndExitCode(t *testing.T) {
	e := newEnv(t)
	res := e.hearth(testContext(t), "run", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
	if res.code != 7 {
		t.Errorf("exit code: got %d, want 7; stderr:\n%s", res.code, res.stderr)
	}
	if res.stdout != "out\n" {
		t.Errorf("stdout: got %q, want %q", res.stdout, "out\n")
	}
	if !regexp.MustCompile(`(?m)^err$`).MatchString(res.stderr) {
		t.Errorf("stderr: got %q, want a line %q", res.stderr, "err")
	}
	e.assertClean()
}

func TestRunNetworkNoneCreatesNoTAP(t *testing.T) {
	e := newEnv(t)
	ctx := testContext(t)

	// Poll the namespace's devices while the sandbox runs.
	done := make(chan struct{})
	seen := make(map[string]bool)
	var mu sync.Mutex
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
			}
			for _, l := range e.links() {
				mu.Lock()
				seen[l] = true
				mu.Unlock()
			}
		}
	}()
	res := e.hearth(ctx, "run", "--network", "none", "--", "sh", "-c", "test ! -e /sys/class/net/eth0 && sleep 1")
	close(done)

	if res.code != 0 {
		t.Fatalf("exit code: got %d, want 0 (eth0 absent in guest); stderr:\n%s", res.code, res.stderr)
	}
	mu.Lock()
	defer mu.Unlock()
	for l := range seen {
		if l != "lo" {
			t.Errorf("device %q appeared in the namespace during a --network none run", l)
		}
	}
	e.assertClean()
}

var inetPattern = regexp.MustCompile(`inet (\d+\.\d+\.\d+\.\d+)/(\d+)`)

func TestRunNetworkReachableAndReleased(t *testing.T) {
	e := newEnv(t)
	ctx := testContext(t)

	cmd := e.command(ctx, "--log-level", "info", "run", "--",
		"sh", "-c", "ip -4 addr show eth0; echo listening; echo pong | nc -l -p 8080")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	var ip string
	scanner := bufio.NewScanner(stdout)
	var output []string
	for scanner.Scan() {
		line := scanner.Text()
		output = append(output, line)
		if m := inetPattern.FindStringSubmatch(line); m != nil {
			ip = m[1]
		}
		if line == "listening" {
			break
		}
	}
	if ip == "" {
		_ = cmd.Wait()
		t.Fatalf("no IPv4 address on eth0 in guest output %q; stderr:\n%s", output, stderr.String())
	}
	if !strings.HasPrefix(ip, "172.20.") {
		t.Errorf("guest address: got %s, want one from the default pool 172.20.0.0/16", ip)
	}

	reply := dialInNetns(t, e.netns, ip+":8080")
	if reply != "pong" {
		t.Errorf("reply from guest listener: got %q, want %q", reply, "pong")
	}
	for scanner.Scan() {
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("hearth run: %v; stderr:\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "ip="+ip) {
		t.Errorf("hearth's log does not report the allocated address %s:\n%s", ip, stderr.String())
	}
	e.assertClean()
}

// dialInNetns connects to addr from inside the network namespace and
// returns the first line it reads. The guest's listener may take a moment
// to start after it printed "listening", so it retries.
func dialInNetns(t *testing.T, netns, addr string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.Command("ip", "netns", "exec", netns,
			"socat", "-T", "5", "-", fmt.Sprintf("TCP:%s:%s,connect-timeout=2", host, port)).Output()
		if err == nil && len(out) > 0 {
			return strings.TrimSpace(string(out))
		}
		if time.Now().After(deadline) {
			t.Fatalf("connect to %s in netns %s: %v", addr, netns, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

var tapPattern = regexp.MustCompile(`tap=(\S+)`)

func TestRunParallelDistinctNetworks(t *testing.T) {
	e := newEnv(t)
	ctx := testContext(t)

	const n = 5
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = e.hearth(ctx, "--log-level", "info", "run", "--", "ip", "-4", "addr", "show", "eth0")
		}()
	}
	wg.Wait()

	ips := make(map[string]int)
	taps := make(map[string]int)
	for i, res := range results {
		if res.code != 0 {
			t.Errorf("run %d: exit code %d; stderr:\n%s", i, res.code, res.stderr)
			continue
		}
		m := inetPattern.FindStringSubmatch(res.stdout)
		if m == nil {
			t.Errorf("run %d: no address in %q", i, res.stdout)
			continue
		}
		ips[m[1]]++
		tap := tapPattern.FindStringSubmatch(res.stderr)
		if tap == nil {
			t.Errorf("run %d: no tap= in hearth's log:\n%s", i, res.stderr)
			continue
		}
		taps[tap[1]]++
	}
	if len(ips) != n {
		t.Errorf("distinct addresses: got %d (%v), want %d", len(ips), ips, n)
	}
	if len(taps) != n {
		t.Errorf("distinct TAP names: got %d (%v), want %d", len(taps), taps, n)
	}
	e.assertClean()
}
