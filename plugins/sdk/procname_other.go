//go:build !linux

package sdk

func fixProcName() {}
