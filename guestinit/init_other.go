//go:build !linux

package guestinit

import (
	"context"
	"errors"
)

// Init returns an error: guest init duties exist only on Linux.
func Init(ctx context.Context) (Config, error) {
	return Config{}, errors.New("guest init duties need Linux")
}

// Shutdown panics: guest init duties exist only on Linux.
func Shutdown() {
	panic("guestinit.Shutdown needs Linux")
}
