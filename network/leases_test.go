package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
)

// tapRecorder is a fake deleteTAP for Pool that records its calls.
type tapRecorder struct {
	mu      sync.Mutex
	deleted []string
	err     error
}

func (r *tapRecorder) deleteTAP(name, netnsPath string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	r.deleted = append(r.deleted, name)
	return nil
}

// newTestPool returns a pool over a fresh data directory whose reclaim
// records TAP deletions instead of touching devices.
func newTestPool(t *testing.T, cidr, gateway string) (*Pool, *tapRecorder) {
	t.Helper()
	return openTestPool(t, cidr, gateway, t.TempDir())
}

func openTestPool(t *testing.T, cidr, gateway, dataDir string) (*Pool, *tapRecorder) {
	t.Helper()
	p, err := NewPool(Config{
		CIDR:    cidr,
		Gateway: gateway,
		DataDir: dataDir,
		Logger:  slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatalf("NewPool(%q, %q): %v", cidr, gateway, err)
	}
	rec := &tapRecorder{}
	p.deleteTAP = rec.deleteTAP
	return p, rec
}

func mustAllocate(t *testing.T, p *Pool, id string, owner Owner) Lease {
	t.Helper()
	l, err := p.Allocate(context.Background(), AllocateRequest{SandboxID: id, Owner: owner})
	if err != nil {
		t.Fatalf("Allocate(%q): %v", id, err)
	}
	return l
}

func leaseIPs(t *testing.T, p *Pool) []string {
	t.Helper()
	leases, err := p.List()
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var ips []string
	for _, l := range leases {
		ips = append(ips, l.SandboxID+"="+l.IP.String())
	}
	return ips
}

func TestAllocateLowestFree(t *testing.T) {
	tests := []struct {
		name    string
		cidr    string
		gateway string
		want    []string // guest addresses in allocation order, until exhausted
	}{
		{name: "slash 30", cidr: "10.0.0.0/30", want: []string{"10.0.0.2"}},
		{name: "slash 30 gateway last", cidr: "10.0.0.0/30", gateway: "10.0.0.2", want: []string{"10.0.0.1"}},
		{name: "slash 29", cidr: "10.0.0.0/29", want: []string{"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"}},
		{name: "slash 29 gateway in middle", cidr: "10.0.0.0/29", gateway: "10.0.0.4", want: []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := newTestPool(t, tc.cidr, tc.gateway)
			owner := currentOwner(t)
			for i, want := range tc.want {
				l := mustAllocate(t, p, fmt.Sprintf("sb-%d", i), owner)
				if got := l.IP.String(); got != want {
					t.Errorf("allocation %d: got %s, want %s", i, got, want)
				}
				wantTAP, _ := p.TAPName(net.ParseIP(want))
				if l.TAP != wantTAP {
					t.Errorf("allocation %d: got tap %q, want %q", i, l.TAP, wantTAP)
				}
			}
			_, err := p.Allocate(context.Background(), AllocateRequest{SandboxID: "one-too-many", Owner: owner})
			if !errors.Is(err, ErrExhausted) {
				t.Fatalf("allocation past capacity: got %v, want ErrExhausted", err)
			}
		})
	}
}

func TestAllocateLeaseFields(t *testing.T) {
	p, _ := newTestPool(t, "", "")
	owner := currentOwner(t)
	l, err := p.Allocate(context.Background(), AllocateRequest{SandboxID: "sb-1", Owner: owner, NetNSPath: "/var/run/netns/x"})
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct{ field, got, want string }{
		{"IP", l.IP.String(), "172.20.0.2"},
		{"Gateway", l.Gateway.String(), "172.20.0.1"},
		{"Netmask", net.IP(l.Netmask).String(), "255.255.0.0"},
		{"Prefix", fmt.Sprint(l.Prefix), "16"},
		{"TAP", l.TAP, "hth2"},
		{"MAC", l.MAC.String(), MACAddress("sb-1").String()},
		{"Owner", fmt.Sprint(l.Owner), fmt.Sprint(owner)},
		{"NetNSPath", l.NetNSPath, "/var/run/netns/x"},
		{"KernelArg", l.KernelArg(), "ip=172.20.0.2::172.20.0.1:255.255.0.0::eth0:off"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %s, want %s", c.field, c.got, c.want)
		}
	}

	stored, err := p.Lookup("sb-1")
	if err != nil {
		t.Fatalf("Lookup: %v", err)
	}
	if fmt.Sprint(stored) != fmt.Sprint(l) {
		t.Errorf("Lookup: got %+v, want %+v", stored, l)
	}
}

func TestAllocateDefaultOwnerIsCaller(t *testing.T) {
	p, _ := newTestPool(t, "", "")
	l, err := p.Allocate(context.Background(), AllocateRequest{SandboxID: "sb-1"})
	if err != nil {
		t.Fatal(err)
	}
	if want := currentOwner(t); l.Owner != want {
		t.Errorf("got owner %+v, want %+v", l.Owner, want)
	}
}

func TestAllocateRejectsDuplicateAndEmptyID(t *testing.T) {
	p, _ := newTestPool(t, "", "")
	mustAllocate(t, p, "sb-1", currentOwner(t))
	if _, err := p.Allocate(context.Background(), AllocateRequest{SandboxID: "sb-1"}); !errors.Is(err, ErrExists) {
		t.Errorf("second lease for sb-1: got %v, want ErrExists", err)
	}
	if _, err := p.Allocate(context.Background(), AllocateRequest{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty sandbox id: got %v, want ErrInvalid", err)
	}
	if got, want := strings.Join(leaseIPs(t, p), " "), "sb-1=172.20.0.2"; got != want {
		t.Errorf("leases: got %s, want %s", got, want)
	}
}

func TestReleaseReusesLowestAddress(t *testing.T) {
	p, _ := newTestPool(t, "10.0.0.0/24", "")
	owner := currentOwner(t)
	for _, id := range []string{"a", "b", "c"} {
		mustAllocate(t, p, id, owner)
	}
	if err := p.Release(context.Background(), "b"); err != nil {
		t.Fatalf("Release(b): %v", err)
	}
	if l := mustAllocate(t, p, "d", owner); l.IP.String() != "10.0.0.3" {
		t.Errorf("after releasing 10.0.0.3: got %s, want 10.0.0.3", l.IP)
	}
}

func TestReleaseIdempotent(t *testing.T) {
	p, _ := newTestPool(t, "", "")
	mustAllocate(t, p, "sb-1", currentOwner(t))
	for i := range 2 {
		if err := p.Release(context.Background(), "sb-1"); err != nil {
			t.Fatalf("Release %d: %v", i, err)
		}
	}
	if err := p.Release(context.Background(), "never-leased"); err != nil {
		t.Errorf("Release of unknown id: got %v, want nil", err)
	}
	if _, err := p.Lookup("sb-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup after Release: got %v, want ErrNotFound", err)
	}
}

func TestStaleOwnerReclaimed(t *testing.T) {
	self := currentOwner(t)
	tests := []struct {
		name  string
		owner Owner
	}{
		{name: "exited process", owner: deadOwner(t)},
		{name: "reused pid", owner: Owner{PID: self.PID, StartTime: self.StartTime + 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, rec := newTestPool(t, "", "")
			mustAllocate(t, p, "live", self)
			stale := mustAllocate(t, p, "stale", tc.owner)

			l := mustAllocate(t, p, "new", self)
			if l.IP.String() != stale.IP.String() {
				t.Errorf("new lease: got %s, want the reclaimed %s", l.IP, stale.IP)
			}
			if _, err := p.Lookup("stale"); !errors.Is(err, ErrNotFound) {
				t.Errorf("Lookup(stale): got %v, want ErrNotFound", err)
			}
			if _, err := p.Lookup("live"); err != nil {
				t.Errorf("Lookup(live): got %v, want the lease kept", err)
			}
			if got := strings.Join(rec.deleted, ","); got != stale.TAP {
				t.Errorf("deleted taps: got %q, want %q", got, stale.TAP)
			}
		})
	}
}

func TestReclaimStale(t *testing.T) {
	p, rec := newTestPool(t, "", "")
	mustAllocate(t, p, "live", currentOwner(t))
	mustAllocate(t, p, "stale", deadOwner(t))

	reclaimed, err := p.ReclaimStale(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(reclaimed) != 1 || reclaimed[0].SandboxID != "stale" {
		t.Errorf("reclaimed: got %v, want the lease of stale", reclaimed)
	}
	if got, want := strings.Join(leaseIPs(t, p), " "), "live=172.20.0.2"; got != want {
		t.Errorf("leases: got %s, want %s", got, want)
	}
	if got, want := strings.Join(rec.deleted, ","), "hth3"; got != want {
		t.Errorf("deleted taps: got %q, want %q", got, want)
	}
}

func TestReclaimKeepsLeaseWhenTAPDeleteFails(t *testing.T) {
	p, rec := newTestPool(t, "", "")
	mustAllocate(t, p, "stale", deadOwner(t))
	rec.err = errors.New("device busy")

	l := mustAllocate(t, p, "new", currentOwner(t))
	if got, want := l.IP.String(), "172.20.0.3"; got != want {
		t.Errorf("new lease: got %s, want %s (skipping the kept stale lease)", got, want)
	}
	if _, err := p.Lookup("stale"); err != nil {
		t.Errorf("Lookup(stale): got %v, want the lease kept", err)
	}
}

func TestSetOwner(t *testing.T) {
	p, _ := newTestPool(t, "", "")
	ctx := context.Background()
	self := currentOwner(t)
	dead := deadOwner(t)
	mustAllocate(t, p, "adopted", self)
	mustAllocate(t, p, "orphan", self)
	// The owner exits, as a daemon that crashed would.
	for _, id := range []string{"adopted", "orphan"} {
		if _, err := p.SetOwner(ctx, id, dead); err != nil {
			t.Fatalf("SetOwner(%s, dead): %v", id, err)
		}
	}

	// A restarted daemon adopts one of them.
	l, err := p.SetOwner(ctx, "adopted", self)
	if err != nil {
		t.Fatalf("SetOwner: %v", err)
	}
	if l.Owner != self {
		t.Errorf("SetOwner returned owner %+v, want %+v", l.Owner, self)
	}

	mustAllocate(t, p, "new", self)
	if _, err := p.Lookup("adopted"); err != nil {
		t.Errorf("Lookup(adopted): got %v, want the re-owned lease kept", err)
	}
	if _, err := p.Lookup("orphan"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup(orphan): got %v, want ErrNotFound", err)
	}

	if _, err := p.SetOwner(ctx, "missing", self); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetOwner(missing): got %v, want ErrNotFound", err)
	}
	if _, err := p.SetOwner(ctx, "adopted", Owner{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("SetOwner with pid 0: got %v, want ErrInvalid", err)
	}
}

func TestOwnerAlive(t *testing.T) {
	self := currentOwner(t)
	tests := []struct {
		name  string
		owner Owner
		want  bool
	}{
		{name: "self", owner: self, want: true},
		{name: "exited", owner: deadOwner(t), want: false},
		{name: "reused pid", owner: Owner{PID: self.PID, StartTime: self.StartTime + 1}, want: false},
		{name: "zero", owner: Owner{}, want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.owner.Alive(); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPoolConfigChange(t *testing.T) {
	dataDir := t.TempDir()
	owner := currentOwner(t)
	old, _ := openTestPool(t, "10.0.0.0/24", "", dataDir)
	mustAllocate(t, old, "old-a", owner) // 10.0.0.2, hth2
	mustAllocate(t, old, "old-b", owner) // 10.0.0.3, hth3

	t.Run("disjoint network", func(t *testing.T) {
		p, _ := openTestPool(t, "10.1.0.0/24", "", dataDir)
		l := mustAllocate(t, p, "new", owner)
		defer p.Release(context.Background(), "new")
		// 10.1.0.2 and .3 would reuse the names hth2 and hth3.
		if got, want := l.IP.String(), "10.1.0.4"; got != want {
			t.Errorf("new lease: got %s, want %s", got, want)
		}
		kept, err := p.Lookup("old-a")
		if err != nil {
			t.Fatalf("Lookup(old-a): %v", err)
		}
		if got, want := kept.KernelArg(), "ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off"; got != want {
			t.Errorf("old lease keeps its addressing: got %q, want %q", got, want)
		}
	})

	t.Run("wider network", func(t *testing.T) {
		p, _ := openTestPool(t, "10.0.0.0/16", "", dataDir)
		l := mustAllocate(t, p, "new", owner)
		defer p.Release(context.Background(), "new")
		if got, want := l.IP.String(), "10.0.0.4"; got != want {
			t.Errorf("new lease: got %s, want %s", got, want)
		}
	})

	t.Run("gateway on a leased address", func(t *testing.T) {
		p, _ := openTestPool(t, "10.0.0.0/24", "10.0.0.3", dataDir)
		_, err := p.Allocate(context.Background(), AllocateRequest{SandboxID: "new", Owner: owner})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `sandbox "old-b"`) {
			t.Errorf("got %v, want ErrInvalid naming old-b", err)
		}
	})

	t.Run("release of old lease", func(t *testing.T) {
		p, _ := openTestPool(t, "10.1.0.0/24", "", dataDir)
		if err := p.Release(context.Background(), "old-a"); err != nil {
			t.Fatalf("Release(old-a): %v", err)
		}
		if got, want := strings.Join(leaseIPs(t, p), " "), "old-b=10.0.0.3"; got != want {
			t.Errorf("leases: got %s, want %s", got, want)
		}
	})
}

func TestCorruptStateFileKept(t *testing.T) {
	p, _ := newTestPool(t, "", "")
	if err := os.MkdirAll(filepath.Dir(p.StatePath()), 0o700); err != nil {
		t.Fatal(err)
	}
	garbage := []byte("{not json")
	if err := os.WriteFile(p.StatePath(), garbage, 0o600); err != nil {
		t.Fatal(err)
	}

	_, err := p.Allocate(context.Background(), AllocateRequest{SandboxID: "sb-1"})
	if err == nil || !strings.Contains(err.Error(), p.StatePath()) {
		t.Fatalf("got %v, want an error naming %s", err, p.StatePath())
	}
	data, _ := os.ReadFile(p.StatePath())
	if string(data) != string(garbage) {
		t.Errorf("state file: got %q, want it left as %q", data, garbage)
	}
}

func TestStateFileDuplicateIPRejected(t *testing.T) {
	p, _ := newTestPool(t, "", "")
	mustAllocate(t, p, "a", currentOwner(t))
	data, err := os.ReadFile(p.StatePath())
	if err != nil {
		t.Fatal(err)
	}
	// Duplicate the lease under another sandbox ID.
	text := string(data)
	start := strings.Index(text, "{\n      \"sandbox_id\"")
	end := strings.LastIndex(text, "}\n  ]")
	entry := text[start : end+1]
	dup := strings.Replace(entry, `"a"`, `"b"`, 1)
	text = text[:end+1] + ",\n" + dup + text[end+1:]
	if err := os.WriteFile(p.StatePath(), []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}

	if _, err := p.List(); err == nil || !strings.Contains(err.Error(), "leased to both") {
		t.Errorf("got %v, want an error about the address leased twice", err)
	}
}

func TestStateDirectoryHasNoTempFiles(t *testing.T) {
	p, _ := newTestPool(t, "", "")
	owner := currentOwner(t)
	for i := range 5 {
		mustAllocate(t, p, fmt.Sprintf("sb-%d", i), owner)
	}
	if err := p.Release(context.Background(), "sb-2"); err != nil {
		t.Fatal(err)
	}

	entries, err := os.ReadDir(filepath.Dir(p.StatePath()))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if got, want := strings.Join(names, " "), "leases.json leases.lock"; got != want {
		t.Errorf("state directory: got %s, want %s", got, want)
	}
}

func TestAllocateConcurrentGoroutines(t *testing.T) {
	p, _ := newTestPool(t, "10.0.0.0/26", "") // 61 guest addresses
	owner := currentOwner(t)
	const workers, perWorker = 8, 10 // 80 requests

	var mu sync.Mutex
	got := map[string]string{}
	exhausted := 0
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				id := fmt.Sprintf("w%d-%d", w, i)
				l, err := p.Allocate(context.Background(), AllocateRequest{SandboxID: id, Owner: owner})
				mu.Lock()
				switch {
				case errors.Is(err, ErrExhausted):
					exhausted++
				case err != nil:
					t.Errorf("Allocate(%s): %v", id, err)
				default:
					if other, dup := got[l.IP.String()]; dup {
						t.Errorf("%s and %s both got %s", other, id, l.IP)
					}
					got[l.IP.String()] = id
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()

	if len(got) != 61 {
		t.Errorf("leases: got %d, want 61", len(got))
	}
	if exhausted != 80-61 {
		t.Errorf("ErrExhausted: got %d, want %d", exhausted, 80-61)
	}
}
