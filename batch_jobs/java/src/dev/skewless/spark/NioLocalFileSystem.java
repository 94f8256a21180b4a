package dev.skewless.spark;

import org.apache.hadoop.fs.LocalFileSystem;

/**
 * The checksummed local file system ({@code file:} scheme) over {@link NioRawLocalFileSystem}: Hadoop's
 * {@link LocalFileSystem} (data file plus {@code .crc}) without a {@code chmod} process per file.
 *
 * <p>Enabled with {@code fs.file.impl=dev.skewless.spark.NioLocalFileSystem} (Spark:
 * {@code spark.hadoop.fs.file.impl}); see {@code skewless/engines/spark_session.py}.
 */
public class NioLocalFileSystem extends LocalFileSystem {
  public NioLocalFileSystem() {
    super(new NioRawLocalFileSystem());
  }
}
