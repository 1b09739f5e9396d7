package actions

import (
	"fmt"
	"strings"
)

// service.restart.

// UnitTypes are systemd's unit suffixes.
var UnitTypes = []string{
	".service", ".socket", ".device", ".mount", ".automount", ".swap",
	".target", ".path", ".timer", ".slice", ".scope",
}

// ServiceRestartParams are service.restart's params.
type ServiceRestartParams struct {
	// Unit is the unit's full name (".service" added when the name had no
	// unit-type suffix).
	Unit string
}

// UnitName validates a unit name and adds ".service" when it has no
// unit-type suffix.
func UnitName(name string) (string, error) {
	if len(name) > 255 {
		return "", fmt.Errorf("unit name %s is longer than 255 bytes", Quote(name, 64))
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(":-_.\\@", r)
		if !ok {
			return "", fmt.Errorf("unit name %s has %q, which systemd does not allow in unit names (letters, digits and \":-_.\\@\" only)", Quote(name, 255), r)
		}
	}
	if strings.HasPrefix(name, ".") || strings.HasPrefix(name, "-") {
		return "", fmt.Errorf("unit name %s must not start with '.' or '-'", Quote(name, 255))
	}
	for _, suffix := range UnitTypes {
		if strings.HasSuffix(name, suffix) && len(name) > len(suffix) {
			return name, nil
		}
	}
	return name + ".service", nil
}

// ParseServiceRestart reads service.restart's params.
func ParseServiceRestart(m map[string]any) (ServiceRestartParams, error) {
	p := NewParams(m)
	r := parseServiceRestart(p)
	return r, p.Err()
}

func parseServiceRestart(p *Params) ServiceRestartParams {
	name := p.String("name")
	if name == "" || controlChar(name) >= 0 { // already a problem
		return ServiceRestartParams{}
	}
	unit, err := UnitName(name)
	if err != nil {
		p.Problem("name", "%v", err)
	}
	return ServiceRestartParams{Unit: unit}
}
