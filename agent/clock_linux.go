package agent

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// setSystemClock sets CLOCK_REALTIME to t.
func setSystemClock(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("clock_settime CLOCK_REALTIME: %w", err)
	}
	return nil
}
