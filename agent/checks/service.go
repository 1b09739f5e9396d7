package checks

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	sddbus "github.com/coreos/go-systemd/v22/dbus"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// The service check: is a systemd unit active, asked over D-Bus.
//
// OK when the unit's ActiveState is "active"; CRITICAL otherwise, with its
// LoadState, ActiveState and SubState in the output. A unit name without a
// unit-type suffix gets ".service". On a host without systemd (no
// /run/systemd/system, as sd_booted(3) checks) or when D-Bus cannot be
// reached, the result is UNKNOWN and says so. Each run opens its own
// connection (the system bus, or as root systemd's private socket when no
// bus daemon runs) and closes it.

func init() { Register("service", newServiceCheck) }

const systemdRunDir = "/run/systemd/system"

// unitTypes are systemd's unit suffixes.
var unitTypes = []string{
	".service", ".socket", ".device", ".mount", ".automount", ".swap",
	".target", ".path", ".timer", ".slice", ".scope",
}

// unitProps is the part of a systemd D-Bus connection the check uses.
type unitProps interface {
	GetUnitPropertiesContext(ctx context.Context, unit string) (map[string]any, error)
	Close()
}

type serviceCheck struct {
	unit       string
	systemdDir string
	dial       func(ctx context.Context) (unitProps, error)
}

func newServiceCheck(spec *agentv1.CheckSpec) (Checker, error) {
	unit, err := unitName(spec.GetService().GetName())
	if err != nil {
		return nil, fmt.Errorf("service check: %w", err)
	}
	return &serviceCheck{unit: unit, systemdDir: systemdRunDir, dial: dialSystemd}, nil
}

// unitName validates a unit name and adds ".service" when it has no
// unit-type suffix.
func unitName(name string) (string, error) {
	if name == "" {
		return "", errors.New("name is empty; give a systemd unit such as \"nginx\" or \"nginx.service\"")
	}
	if len(name) > 255 {
		return "", fmt.Errorf("unit name %s is longer than 255 bytes", quote(name))
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(":-_.\\@", r)
		if !ok {
			return "", fmt.Errorf("unit name %s has %q, which systemd does not allow in unit names (letters, digits and \":-_.\\@\" only)", quote(name), r)
		}
	}
	for _, suffix := range unitTypes {
		if strings.HasSuffix(name, suffix) && len(name) > len(suffix) {
			return name, nil
		}
	}
	return name + ".service", nil
}

func dialSystemd(ctx context.Context) (unitProps, error) {
	conn, err := sddbus.NewSystemConnectionContext(ctx)
	if err == nil {
		return conn, nil
	}
	if os.Geteuid() == 0 {
		// No bus daemon: root may talk to systemd directly.
		if conn, perr := sddbus.NewSystemdConnectionContext(ctx); perr == nil {
			return conn, nil
		}
	}
	return nil, err
}

func (c *serviceCheck) Check(ctx context.Context) Result {
	if fi, err := os.Stat(c.systemdDir); err != nil || !fi.IsDir() {
		return result(statusUnknown, nil, "systemd is not running on this host (no %s): service checks need systemd, so %s cannot be checked", c.systemdDir, c.unit)
	}
	conn, err := c.dial(ctx)
	if err != nil {
		return result(statusUnknown, nil, "cannot reach systemd over D-Bus to check %s: %v", c.unit, err)
	}
	defer conn.Close()
	props, err := conn.GetUnitPropertiesContext(ctx, c.unit)
	if err != nil {
		return result(statusUnknown, nil, "cannot read the state of %s from systemd: %v", c.unit, err)
	}
	return serviceResult(c.unit, props)
}

// serviceResult judges a unit from its D-Bus properties.
func serviceResult(unit string, props map[string]any) Result {
	str := func(k string) string {
		s, _ := props[k].(string)
		return s
	}
	load, active, sub := str("LoadState"), str("ActiveState"), str("SubState")
	if active == "" {
		return result(statusUnknown, nil, "systemd returned no ActiveState for %s", unit)
	}
	if active == "active" {
		return result(statusOK, map[string]float64{"active": 1}, "%s is active (%s)", unit, quote(sub))
	}
	hint := ""
	if load == "not-found" {
		hint = ": no such unit is installed"
	}
	return result(statusCritical, map[string]float64{"active": 0},
		"%s is not active: ActiveState=%s SubState=%s LoadState=%s%s", unit, quote(active), quote(sub), quote(load), hint)
}
