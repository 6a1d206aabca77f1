package sandbox

import (
	"errors"
	"sync"
	"time"
)

// Event actions, spelled as in the sandbox.v1 API.
const (
	ActionCreated  = "created"
	ActionReady    = "ready"
	ActionRunning  = "running"
	ActionIdle     = "idle" // a workload ended; attribute exit_code
	ActionStopping = "stopping"
	ActionStopped  = "stopped"
	ActionFailed   = "failed" // attribute error
	ActionRemoved  = "removed"
)

// Event is one lifecycle change of a sandbox.
type Event struct {
	SandboxID  string
	Action     string
	Time       time.Time
	Attributes map[string]string
}

// EventFilter selects events; empty fields match everything.
type EventFilter struct {
	SandboxID string
	Action    string
}

func (f EventFilter) match(ev Event) bool {
	return (f.SandboxID == "" || f.SandboxID == ev.SandboxID) &&
		(f.Action == "" || f.Action == ev.Action)
}

// DefaultEventBacklog is the number of undelivered events a subscriber may
// fall behind by before its subscription ends with ErrEventsOverflow.
const DefaultEventBacklog = 1024

// ErrEventsOverflow ends a subscription whose reader fell behind by more
// than its backlog. Publishing never blocks on a slow subscriber, and no
// event is dropped silently: the subscriber sees this error instead.
var ErrEventsOverflow = errors.New("event subscriber fell behind by more than its backlog; subscribe again")

// Subscription receives the events that match its filter, in order.
type Subscription struct {
	bus    *eventBus
	filter EventFilter
	c      chan Event

	once sync.Once
	err  error
}

// C returns the channel events arrive on. It is closed when the
// subscription ends; Err then says why.
func (s *Subscription) C() <-chan Event { return s.c }

// Err returns ErrEventsOverflow after an overflow, nil after Close.
func (s *Subscription) Err() error {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	return s.err
}

// Close ends the subscription. It is idempotent.
func (s *Subscription) Close() {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	s.endLocked(nil)
}

func (s *Subscription) endLocked(err error) {
	s.once.Do(func() {
		s.err = err
		delete(s.bus.subs, s)
		close(s.c)
	})
}

// eventBus fans events out to subscribers without ever blocking the
// publisher: each subscriber has a buffered channel, and one that is full
// is ended with ErrEventsOverflow.
type eventBus struct {
	mu   sync.Mutex
	subs map[*Subscription]struct{}
}

func newEventBus() *eventBus {
	return &eventBus{subs: make(map[*Subscription]struct{})}
}

func (b *eventBus) subscribe(filter EventFilter, backlog int) *Subscription {
	if backlog <= 0 {
		backlog = DefaultEventBacklog
	}
	s := &Subscription{bus: b, filter: filter, c: make(chan Event, backlog)}
	b.mu.Lock()
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s
}

func (b *eventBus) publish(ev Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs {
		if !s.filter.match(ev) {
			continue
		}
		select {
		case s.c <- ev:
		default:
			s.endLocked(ErrEventsOverflow)
		}
	}
}
