package guestinit

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"strings"
)

// kernelModule is one loadable module from modules.dep.
type kernelModule struct {
	// Name is the module name with dashes written as underscores.
	Name string
	// Path is the .ko file, relative to /lib/modules/<release>.
	Path string
	// Deps are the names of the modules it needs, as modules.dep lists
	// them.
	Deps []string
}

// moduleName returns the canonical name of a module given by name or by
// file path: the base name without .ko and a compression suffix, with
// dashes written as underscores, as the kernel treats them alike.
func moduleName(s string) string {
	s = path.Base(s)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		s = strings.TrimSuffix(s, ext)
	}
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

// parseModulesDep parses depmod's modules.dep: one line per module,
// "<path>: <dependency path> ...", paths relative to the modules
// directory. It returns the modules by canonical name.
func parseModulesDep(r io.Reader) (map[string]kernelModule, error) {
	modules := make(map[string]kernelModule)
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		file, deps, ok := strings.Cut(text, ":")
		if !ok || strings.TrimSpace(file) == "" {
			return nil, fmt.Errorf("modules.dep line %d: %q has no \"<path>:\"", line, text)
		}
		m := kernelModule{Name: moduleName(file), Path: strings.TrimSpace(file)}
		for _, dep := range strings.Fields(deps) {
			m.Deps = append(m.Deps, moduleName(dep))
		}
		modules[m.Name] = m
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	return modules, nil
}

// parseModulesBuiltin parses depmod's modules.builtin, one path of a
// module built into the kernel per line, and returns the canonical names.
func parseModulesBuiltin(r io.Reader) (map[string]bool, error) {
	builtin := make(map[string]bool)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if text := strings.TrimSpace(sc.Text()); text != "" {
			builtin[moduleName(text)] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.builtin: %w", err)
	}
	return builtin, nil
}

// moduleLoadOrder returns the modules to load for the requested names,
// each after its dependencies and each once. A requested module built
// into the kernel is skipped. Dependencies are resolved from each
// module's own modules.dep line, so the order does not rely on how depmod
// ordered a line.
func moduleLoadOrder(modules map[string]kernelModule, builtin map[string]bool, requested []string) ([]kernelModule, error) {
	const (
		visiting = 1
		done     = 2
	)
	state := make(map[string]int)
	var order []kernelModule
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module dependency cycle: %s -> %s", strings.Join(chain, " -> "), name)
		}
		m, ok := modules[name]
		if !ok {
			if builtin[name] {
				state[name] = done
				return nil
			}
			if len(chain) > 0 {
				return fmt.Errorf("module %s, needed by %s, is not in modules.dep",
					name, chain[len(chain)-1])
			}
			return fmt.Errorf("module %s is neither in modules.dep nor in modules.builtin: "+
				"add it to the initramfs or drop it from hearth.modules", name)
		}
		state[name] = visiting
		for _, dep := range m.Deps {
			if err := visit(dep, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = done
		order = append(order, m)
		return nil
	}
	for _, name := range requested {
		if err := visit(moduleName(name), nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
