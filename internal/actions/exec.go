package actions

// exec.run.

// ExecRunParams are exec.run's params.
type ExecRunParams struct {
	Argv []string
}

// ParseExecRun reads exec.run's params.
func ParseExecRun(m map[string]any) (ExecRunParams, error) {
	p := NewParams(m)
	r := parseExecRun(p)
	return r, p.Err()
}

func parseExecRun(p *Params) ExecRunParams {
	return ExecRunParams{Argv: p.Argv("argv")}
}
