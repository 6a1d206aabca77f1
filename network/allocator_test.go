package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
)

// fakeTAPs replaces the TAP functions of an Allocator.
type fakeTAPs struct {
	created   []string
	deleted   []string
	createErr []error // returned by successive createTAP calls
	deleteErr error
	detached  bool // what deleteDetachedTAP reports
	onCreate  func()
}

func (f *fakeTAPs) createTAP(name string, gateway, guest net.IP, opts TAPOptions) error {
	if f.onCreate != nil {
		f.onCreate()
	}
	if len(f.createErr) > 0 {
		err := f.createErr[0]
		f.createErr = f.createErr[1:]
		if err != nil {
			return err
		}
	}
	f.created = append(f.created, fmt.Sprintf("%s %s peer %s ns=%q", name, gateway, guest, opts.NetNSPath))
	return nil
}

func (f *fakeTAPs) deleteTAP(name string, opts TAPOptions) error {
	if f.deleteErr != nil {
		return f.deleteErr
	}
	f.deleted = append(f.deleted, name)
	return nil
}

func (f *fakeTAPs) deleteDetachedTAP(name string, opts TAPOptions) (bool, error) {
	if f.detached {
		f.deleted = append(f.deleted, name)
	}
	return f.detached, nil
}

func newFakeAllocator(t *testing.T, cfg AllocatorConfig) (*Allocator, *fakeTAPs) {
	t.Helper()
	pool, _ := newTestPool(t, "", "")
	cfg.Logger = slog.New(slog.DiscardHandler)
	a, err := NewAllocator(pool, cfg)
	if err != nil {
		t.Fatalf("NewAllocator: %v", err)
	}
	fake := &fakeTAPs{}
	a.createTAP = fake.createTAP
	a.deleteTAP = fake.deleteTAP
	a.deleteDetachedTAP = fake.deleteDetachedTAP
	return a, fake
}

func TestAcquireCreatesTAP(t *testing.T) {
	a, fake := newFakeAllocator(t, AllocatorConfig{TAP: TAPOptions{NetNSPath: "/run/netns/x"}})
	l, err := a.Acquire(context.Background(), "sb-1")
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if got, want := strings.Join(fake.created, "; "), `hth2 172.20.0.1 peer 172.20.0.2 ns="/run/netns/x"`; got != want {
		t.Errorf("created: got %s, want %s", got, want)
	}
	if l.Owner != currentOwner(t) {
		t.Errorf("owner: got %+v, want the calling process", l.Owner)
	}
	stored, err := a.Pool().Lookup("sb-1")
	if err != nil {
		t.Fatalf("Lookup: %v", err)
	}
	if stored.NetNSPath != "/run/netns/x" {
		t.Errorf("stored namespace: got %q, want /run/netns/x", stored.NetNSPath)
	}
}

func TestAcquireRollsBackOnTAPFailure(t *testing.T) {
	a, fake := newFakeAllocator(t, AllocatorConfig{})
	cause := errors.New("no tun")
	fake.createErr = []error{cause}

	_, err := a.Acquire(context.Background(), "sb-1")
	if !errors.Is(err, cause) {
		t.Fatalf("got %v, want it to wrap %v", err, cause)
	}
	if _, err := a.Pool().Lookup("sb-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup after failed Acquire: got %v, want ErrNotFound", err)
	}
}

func TestAcquireRollsBackAfterCancel(t *testing.T) {
	a, fake := newFakeAllocator(t, AllocatorConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	fake.onCreate = cancel
	fake.createErr = []error{context.Canceled}

	if _, err := a.Acquire(ctx, "sb-1"); err == nil {
		t.Fatal("got no error, want one")
	}
	if _, err := a.Pool().Lookup("sb-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup after cancelled Acquire: got %v, want ErrNotFound", err)
	}
}

func TestAcquireOrphanTAP(t *testing.T) {
	tests := []struct {
		name        string
		detached    bool
		wantErr     bool
		wantCreated int
	}{
		{name: "detached is replaced", detached: true, wantCreated: 1},
		{name: "attached is kept", detached: false, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, fake := newFakeAllocator(t, AllocatorConfig{})
			fake.createErr = []error{fmt.Errorf("create tap: %w", ErrExists)}
			fake.detached = tc.detached

			_, err := a.Acquire(context.Background(), "sb-1")
			if gotErr := err != nil; gotErr != tc.wantErr {
				t.Fatalf("got error %v, want error: %v", err, tc.wantErr)
			}
			if tc.wantErr && !errors.Is(err, ErrExists) {
				t.Errorf("got %v, want ErrExists", err)
			}
			if len(fake.created) != tc.wantCreated {
				t.Errorf("created: got %v, want %d devices", fake.created, tc.wantCreated)
			}
			_, lookupErr := a.Pool().Lookup("sb-1")
			if tc.wantErr && !errors.Is(lookupErr, ErrNotFound) {
				t.Errorf("Lookup: got %v, want ErrNotFound", lookupErr)
			}
			if !tc.wantErr && lookupErr != nil {
				t.Errorf("Lookup: got %v, want the lease", lookupErr)
			}
		})
	}
}

func TestAllocatorRelease(t *testing.T) {
	a, fake := newFakeAllocator(t, AllocatorConfig{})
	ctx := context.Background()
	if _, err := a.Acquire(ctx, "sb-1"); err != nil {
		t.Fatal(err)
	}

	fake.deleteErr = errors.New("device busy")
	if err := a.Release(ctx, "sb-1"); !errors.Is(err, fake.deleteErr) {
		t.Fatalf("Release with failing delete: got %v, want %v", err, fake.deleteErr)
	}
	if _, err := a.Pool().Lookup("sb-1"); err != nil {
		t.Errorf("Lookup after failed Release: got %v, want the lease kept", err)
	}

	fake.deleteErr = nil
	for i := range 2 {
		if err := a.Release(ctx, "sb-1"); err != nil {
			t.Fatalf("Release %d: %v", i, err)
		}
	}
	if got, want := strings.Join(fake.deleted, ","), "hth2"; got != want {
		t.Errorf("deleted: got %q, want %q", got, want)
	}
	if _, err := a.Pool().Lookup("sb-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup after Release: got %v, want ErrNotFound", err)
	}
}
