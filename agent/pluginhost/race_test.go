//go:build race

package pluginhost

func init() { raceEnabled = true }
