//go:build linux

package pluginhost

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"

	"github.com/hashicorp/go-plugin"
	"golang.org/x/sys/unix"
)

// Starting a plugin without a time-of-check/time-of-use gap.
//
// go-plugin's SecureConfig hashes the file at a path and then execs that
// path: whoever can replace the file (rename another over it, or write
// into it) between the two runs their code as the agent. Instead, the host
// copies the binary into a sealed memfd, hashing the very bytes it copies,
// compares the hash with the catalog's, and execs the memfd: what runs is
// exactly what was hashed, whatever happens to the file afterwards. The
// memfd reaches the child as file descriptor 3 and is executed as
// /proc/self/fd/3 (argv[0] stays the catalogued path).
//
// Where memfd_create is missing, or executable memfds are forbidden
// (vm.memfd_noexec=2), the host falls back to hashing through an open file
// descriptor and executing that descriptor: a path swap (rename, symlink)
// after the check is still harmless, but a process that may write to the
// binary itself could change it between the hash and the exec. The log
// says which way a plugin was started.

// childFD is the descriptor the verified binary has in the child
// (exec.Cmd.ExtraFiles[0]).
const childFD = 3

// Hooks for tests.
var (
	// memfdCreate is unix.MemfdCreate.
	memfdCreate = unix.MemfdCreate
	// afterVerify is called once the binary is verified and before the
	// plugin is started.
	afterVerify = func(path string) {}
)

// memfdSeals make the memfd's content final.
const memfdSeals = unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE

// verifiedCmd returns the command that starts the plugin binary e, which
// executes exactly the bytes whose SHA-256 is e.SHA256, and the file the
// caller closes once the plugin started. A binary that no longer matches
// is refused with an error wrapping plugin.ErrChecksumsDoNotMatch. how
// says how it is pinned ("memfd" or "fd"). go-plugin's own SecureConfig is
// not used: it checks by path.
func verifiedCmd(name string, e Entry) (cmd *exec.Cmd, pinned *os.File, secure *plugin.SecureConfig, how string, err error) {
	src, err := os.Open(e.Path)
	if err != nil {
		return nil, nil, nil, "", err
	}
	fi, err := src.Stat()
	if err != nil {
		src.Close()
		return nil, nil, nil, "", err
	}
	if !fi.Mode().IsRegular() {
		src.Close()
		return nil, nil, nil, "", fmt.Errorf("%s is no longer a regular file (%s)", e.Path, fi.Mode().Type())
	}
	pinned, how, err = copyToMemfd(name, src, e.SHA256)
	if pinned == nil && err == nil {
		// No executable memfd here: hash through the descriptor, and run
		// the descriptor.
		pinned, how, err = src, "fd", checkHash(src, e.SHA256)
	} else {
		src.Close()
	}
	if err != nil {
		if pinned != nil {
			pinned.Close()
		}
		return nil, nil, nil, "", err
	}
	afterVerify(e.Path)
	cmd = &exec.Cmd{
		Path:       fmt.Sprintf("/proc/self/fd/%d", childFD),
		Args:       []string{e.Path},
		ExtraFiles: []*os.File{pinned},
	}
	return cmd, pinned, nil, how, nil
}

// copyToMemfd copies src into a new sealed, executable memfd, hashing the
// bytes copied, and returns the memfd if they hash to want. It returns
// (nil, "", nil) when this kernel cannot give an executable memfd.
func copyToMemfd(name string, src *os.File, want []byte) (*os.File, string, error) {
	label := "tend-plugin-" + name
	fd, err := memfdCreate(label, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_EXEC)
	if errors.Is(err, unix.EINVAL) {
		// Kernels before 6.3 do not know MFD_EXEC; their memfds are
		// executable.
		fd, err = memfdCreate(label, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if err != nil {
		return nil, "", nil
	}
	mem := os.NewFile(uintptr(fd), "memfd:"+label)
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(mem, h), src); err != nil {
		mem.Close()
		return nil, "", fmt.Errorf("copying %s to verify it: %w", src.Name(), err)
	}
	if got := h.Sum(nil); !bytes.Equal(got, want) {
		mem.Close()
		return nil, "", fmt.Errorf("%w: SHA-256 %x", plugin.ErrChecksumsDoNotMatch, got)
	}
	if _, err := unix.FcntlInt(mem.Fd(), unix.F_ADD_SEALS, memfdSeals); err != nil {
		mem.Close()
		return nil, "", fmt.Errorf("sealing the copy of %s: %w", src.Name(), err)
	}
	return mem, "memfd", nil
}

// checkHash hashes f from its start and compares with want.
func checkHash(f *os.File, want []byte) error {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, 1<<62)); err != nil {
		return fmt.Errorf("hashing %s: %w", f.Name(), err)
	}
	if got := h.Sum(nil); !bytes.Equal(got, want) {
		return fmt.Errorf("%w: SHA-256 %x", plugin.ErrChecksumsDoNotMatch, got)
	}
	return nil
}
