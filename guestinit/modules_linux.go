//go:build linux

package guestinit

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// loadModules loads the requested modules and their dependencies from
// /lib/modules/<release>, dependencies first.
func loadModules(requested []string) error {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return fmt.Errorf("uname: %w", err)
	}
	dir := filepath.Join("/lib/modules", unix.ByteSliceToString(uts.Release[:]))
	order, err := readLoadOrder(dir, requested)
	if err != nil {
		return err
	}
	for _, m := range order {
		start := time.Now()
		if err := loadModule(filepath.Join(dir, m.Path)); err != nil {
			return fmt.Errorf("load module %s: %w", m.Name, err)
		}
		slog.Info("module loaded", "module", m.Name, "duration", time.Since(start).Round(time.Microsecond))
	}
	return nil
}

// readLoadOrder reads modules.dep and modules.builtin in dir and orders
// the requested modules. A missing modules.builtin counts as empty.
func readLoadOrder(dir string, requested []string) ([]kernelModule, error) {
	depPath := filepath.Join(dir, "modules.dep")
	f, err := os.Open(depPath)
	if err != nil {
		return nil, fmt.Errorf("open %s (the initramfs needs it to load %s): %w",
			depPath, strings.Join(requested, ","), err)
	}
	defer f.Close()
	modules, err := parseModulesDep(f)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", depPath, err)
	}

	builtin := map[string]bool{}
	builtinPath := filepath.Join(dir, "modules.builtin")
	b, err := os.Open(builtinPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("open %s: %w", builtinPath, err)
	default:
		defer b.Close()
		if builtin, err = parseModulesBuiltin(b); err != nil {
			return nil, fmt.Errorf("parse %s: %w", builtinPath, err)
		}
	}
	return moduleLoadOrder(modules, builtin, requested)
}

// loadModule loads one .ko file with finit_module(2). A module that is
// already loaded (EEXIST) is fine. Compressed files are left to the
// kernel's in-kernel decompression (MODULE_INIT_COMPRESSED_FILE).
func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if !strings.HasSuffix(path, ".ko") {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("finit_module %s: %w", path, err)
	}
	return nil
}
