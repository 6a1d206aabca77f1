package network

import (
	"io"
	"os"
	"os/exec"
	"testing"
)

// helperEnv selects a helper mode when the test binary re-executes itself.
const helperEnv = "HEARTH_NETWORK_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "allocate":
		os.Exit(runAllocateWorker())
	case "wait":
		// Block until the parent closes stdin or kills the process.
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	default:
		os.Exit(2)
	}
}

// deadOwner returns the Owner of a helper process that has exited and been
// reaped.
func deadOwner(t *testing.T) Owner {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=wait")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper process: %v", err)
	}
	owner, err := ProcessOwner(cmd.Process.Pid)
	stdin.Close()
	if werr := cmd.Wait(); werr != nil {
		t.Fatalf("helper process: %v", werr)
	}
	if err != nil {
		t.Fatalf("ProcessOwner(%d): %v", cmd.Process.Pid, err)
	}
	return owner
}

func currentOwner(t *testing.T) Owner {
	t.Helper()
	owner, err := CurrentOwner()
	if err != nil {
		t.Fatalf("CurrentOwner: %v", err)
	}
	return owner
}
