package dev.skewless.spark;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.attribute.PosixFilePermission;
import java.util.EnumSet;
import java.util.Set;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.RawLocalFileSystem;
import org.apache.hadoop.fs.permission.FsAction;
import org.apache.hadoop.fs.permission.FsPermission;

/**
 * Hadoop's raw local file system with a fork-free {@link #setPermission}.
 *
 * <p>Without Hadoop's native library (the pyspark wheel ships none), {@code RawLocalFileSystem.setPermission}
 * runs {@code chmod} in a child process, and Hadoop calls it for every file it creates and every directory it
 * makes with a permission: an Iceberg write of N day partitions forks about 4N processes. This class sets the
 * same mode bits with {@link Files#setPosixFilePermissions} (a {@code chmod(2)} in the JVM, following symbolic
 * links like {@code chmod} does). The sticky bit has no NIO equivalent, and a file system without POSIX
 * attributes cannot take them: both keep Hadoop's behaviour.
 */
public class NioRawLocalFileSystem extends RawLocalFileSystem {
  private static final PosixFilePermission[] USER = {
    PosixFilePermission.OWNER_READ, PosixFilePermission.OWNER_WRITE, PosixFilePermission.OWNER_EXECUTE};
  private static final PosixFilePermission[] GROUP = {
    PosixFilePermission.GROUP_READ, PosixFilePermission.GROUP_WRITE, PosixFilePermission.GROUP_EXECUTE};
  private static final PosixFilePermission[] OTHERS = {
    PosixFilePermission.OTHERS_READ, PosixFilePermission.OTHERS_WRITE, PosixFilePermission.OTHERS_EXECUTE};

  @Override
  public void setPermission(Path p, FsPermission permission) throws IOException {
    if (permission.getStickyBit()) {
      super.setPermission(p, permission);
      return;
    }
    Set<PosixFilePermission> bits = EnumSet.noneOf(PosixFilePermission.class);
    add(bits, permission.getUserAction(), USER);
    add(bits, permission.getGroupAction(), GROUP);
    add(bits, permission.getOtherAction(), OTHERS);
    try {
      Files.setPosixFilePermissions(pathToFile(p).toPath(), bits);
    } catch (UnsupportedOperationException notPosix) {
      super.setPermission(p, permission);
    }
  }

  /** The read/write/execute bits of {@code action} as {@code rwx[0..2]}. */
  private static void add(Set<PosixFilePermission> bits, FsAction action, PosixFilePermission[] rwx) {
    if (action.implies(FsAction.READ)) {
      bits.add(rwx[0]);
    }
    if (action.implies(FsAction.WRITE)) {
      bits.add(rwx[1]);
    }
    if (action.implies(FsAction.EXECUTE)) {
      bits.add(rwx[2]);
    }
  }
}
