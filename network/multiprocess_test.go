package network

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// Environment of an allocate worker, a copy of the test binary started by
// runWorkers.
const (
	workerDataDirEnv = "HEARTH_NETWORK_TEST_DATA_DIR"
	workerCIDREnv    = "HEARTH_NETWORK_TEST_CIDR"
	workerIndexEnv   = "HEARTH_NETWORK_TEST_WORKER"
	workerCountEnv   = "HEARTH_NETWORK_TEST_COUNT"
	workerChurnEnv   = "HEARTH_NETWORK_TEST_CHURN"
	workerOwnerEnv   = "HEARTH_NETWORK_TEST_OWNER"
)

// runAllocateWorker allocates leases in a worker process and prints one
// line per result: "lease ID IP TAP" for each lease it holds at the end,
// "exhausted ID" for each ErrExhausted. With churn it releases every other
// lease after the first round and allocates as many again, so released
// addresses are handed out again while other workers allocate.
func runAllocateWorker() int {
	if err := allocateWorker(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func allocateWorker() error {
	// Wait for the parent to close stdin, so all workers start together.
	io.Copy(io.Discard, os.Stdin)

	count, err := strconv.Atoi(os.Getenv(workerCountEnv))
	if err != nil {
		return err
	}
	var owner Owner
	if _, err := fmt.Sscanf(os.Getenv(workerOwnerEnv), "%d:%d", &owner.PID, &owner.StartTime); err != nil {
		return fmt.Errorf("parse owner: %w", err)
	}
	p, err := NewPool(Config{CIDR: os.Getenv(workerCIDREnv), DataDir: os.Getenv(workerDataDirEnv)})
	if err != nil {
		return err
	}
	prefix := "w" + os.Getenv(workerIndexEnv)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()

	held := map[string]Lease{}
	allocate := func(id string) error {
		l, err := p.Allocate(context.Background(), AllocateRequest{SandboxID: id, Owner: owner})
		if errors.Is(err, ErrExhausted) {
			fmt.Fprintln(out, "exhausted", id)
			return nil
		}
		if err != nil {
			return err
		}
		held[id] = l
		return nil
	}

	for i := range count {
		if err := allocate(fmt.Sprintf("%s-%d", prefix, i)); err != nil {
			return err
		}
	}
	if os.Getenv(workerChurnEnv) != "" {
		for i := 0; i < count; i += 2 {
			id := fmt.Sprintf("%s-%d", prefix, i)
			if err := p.Release(context.Background(), id); err != nil {
				return err
			}
			delete(held, id)
		}
		for i := 0; i < count; i += 2 {
			if err := allocate(fmt.Sprintf("%s-again-%d", prefix, i)); err != nil {
				return err
			}
		}
	}

	for id, l := range held {
		fmt.Fprintln(out, "lease", id, l.IP, l.TAP)
	}
	return nil
}

// workerResult is what all workers printed together.
type workerResult struct {
	leases    map[string]string // sandbox ID -> "IP TAP"
	exhausted int
}

// runWorkers runs workers processes of the test binary at once, each
// allocating count leases from one pool, and collects their output.
func runWorkers(t *testing.T, dataDir, cidr string, workers, count int, churn bool) workerResult {
	t.Helper()
	owner := currentOwner(t)
	var cmds []*exec.Cmd
	var outputs []*bytes.Buffer
	var stdins []io.WriteCloser
	for w := range workers {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(),
			helperEnv+"=allocate",
			workerDataDirEnv+"="+dataDir,
			workerCIDREnv+"="+cidr,
			workerIndexEnv+"="+strconv.Itoa(w),
			workerCountEnv+"="+strconv.Itoa(count),
			fmt.Sprintf("%s=%d:%d", workerOwnerEnv, owner.PID, owner.StartTime),
		)
		if churn {
			cmd.Env = append(cmd.Env, workerChurnEnv+"=1")
		}
		var stdout bytes.Buffer
		cmd.Stdout = &stdout
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start worker %d: %v", w, err)
		}
		cmds = append(cmds, cmd)
		outputs = append(outputs, &stdout)
		stdins = append(stdins, stdin)
	}
	for _, stdin := range stdins {
		stdin.Close()
	}

	result := workerResult{leases: map[string]string{}}
	byAddress := map[string]string{}
	for w, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("worker %d: %v", w, err)
			continue
		}
		for _, line := range strings.Split(strings.TrimSpace(outputs[w].String()), "\n") {
			fields := strings.Fields(line)
			switch {
			case len(fields) == 2 && fields[0] == "exhausted":
				result.exhausted++
			case len(fields) == 4 && fields[0] == "lease":
				id, ip, tap := fields[1], fields[2], fields[3]
				for _, key := range []string{"ip " + ip, "tap " + tap} {
					if other, dup := byAddress[key]; dup {
						t.Errorf("%s and %s both hold %s", other, id, key)
					}
					byAddress[key] = id
				}
				result.leases[id] = ip + " " + tap
			case line != "":
				t.Errorf("worker %d: unexpected output line %q", w, line)
			}
		}
	}
	return result
}

// checkStateMatches checks that the state file holds exactly the leases
// the workers reported.
func checkStateMatches(t *testing.T, dataDir, cidr string, want map[string]string) {
	t.Helper()
	p, _ := openTestPool(t, cidr, "", dataDir)
	leases, err := p.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != len(want) {
		t.Errorf("state file: got %d leases, want %d", len(leases), len(want))
	}
	for _, l := range leases {
		if got := l.IP.String() + " " + l.TAP; got != want[l.SandboxID] {
			t.Errorf("state file lease of %s: got %q, want %q", l.SandboxID, got, want[l.SandboxID])
		}
	}
}

func TestAllocateAcrossProcesses(t *testing.T) {
	const workers, count = 8, 20
	dataDir := t.TempDir()
	res := runWorkers(t, dataDir, "10.0.0.0/24", workers, count, true)

	if len(res.leases) != workers*count {
		t.Errorf("leases held: got %d, want %d", len(res.leases), workers*count)
	}
	if res.exhausted != 0 {
		t.Errorf("ErrExhausted: got %d, want 0", res.exhausted)
	}
	checkStateMatches(t, dataDir, "10.0.0.0/24", res.leases)
}

func TestAllocateAcrossProcessesExhausts(t *testing.T) {
	const workers, count = 8, 10 // 80 requests for 61 addresses
	dataDir := t.TempDir()
	res := runWorkers(t, dataDir, "10.0.0.0/26", workers, count, false)

	if len(res.leases) != 61 {
		t.Errorf("leases held: got %d, want 61", len(res.leases))
	}
	if res.exhausted != workers*count-61 {
		t.Errorf("ErrExhausted: got %d, want %d", res.exhausted, workers*count-61)
	}
	checkStateMatches(t, dataDir, "10.0.0.0/26", res.leases)
}
