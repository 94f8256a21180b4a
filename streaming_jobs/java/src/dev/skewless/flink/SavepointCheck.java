package dev.skewless.flink;

import java.io.BufferedInputStream;
import java.io.DataInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.HashSet;
import java.util.Set;
import org.apache.flink.runtime.checkpoint.Checkpoints;
import org.apache.flink.runtime.checkpoint.OperatorState;
import org.apache.flink.runtime.checkpoint.metadata.CheckpointMetadata;
import org.apache.flink.runtime.jobgraph.OperatorID;
import org.apache.flink.shaded.guava33.com.google.common.hash.Hashing;

/**
 * Which operators of ours a checkpoint or savepoint holds state for, before a job is restored from it (a job graph
 * without our stateful operators, e.g. one from before the Java tile operator, cannot be restored into this one).
 * An operator's id is the hash of its uid, as Flink computes it for operators with a user-given uid
 * (murmur3_128 with seed 0 of the uid's UTF-8 bytes, StreamGraphHasherV2).
 */
public final class SavepointCheck {
    private SavepointCheck() {
    }

    /** The operator id Flink gives the operator with {@code uid}. */
    static OperatorID operatorId(String uid) {
        return new OperatorID(Hashing.murmur3_128(0).newHasher().putString(uid, StandardCharsets.UTF_8).hash().asBytes());
    }

    /** The {@code _metadata} file of a savepoint/checkpoint directory (a local path or file: URI), or the file itself. */
    static Path metadataFile(String pointer) {
        Path p = pointer.startsWith("file:") ? Paths.get(URI.create(pointer)) : Paths.get(pointer);
        return Files.isDirectory(p) ? p.resolve("_metadata") : p;
    }

    /** The ids of the operators with state in the checkpoint at {@code pointer}. */
    static Set<OperatorID> operatorsWithState(String pointer) throws IOException {
        Path file = metadataFile(pointer);
        try (InputStream in = new BufferedInputStream(Files.newInputStream(file))) {
            CheckpointMetadata m = Checkpoints.loadCheckpointMetadata(new DataInputStream(in),
                SavepointCheck.class.getClassLoader(), pointer);
            Set<OperatorID> ids = new HashSet<>();
            for (OperatorState s : m.getOperatorStates()) {
                if (s.getStateSize() > 0 || s.hasSubtaskStates()) {
                    ids.add(s.getOperatorID());
                }
            }
            return ids;
        }
    }

    /**
     * Args: {@code <pointer> <uid>...}; stdout one line per uid: {@code present} or {@code missing}. Exit 3 with the
     * reason on stderr when the metadata cannot be read.
     */
    public static void main(String[] argv) {
        Set<OperatorID> ids;
        try {
            ids = operatorsWithState(argv[0]);
        } catch (IOException | RuntimeException e) {
            System.err.println("cannot read the checkpoint metadata at " + argv[0] + ": " + e);
            System.exit(3);
            return;
        }
        StringBuilder out = new StringBuilder();
        for (int i = 1; i < argv.length; i++) {
            out.append(ids.contains(operatorId(argv[i])) ? "present" : "missing").append('\n');
        }
        System.out.print(out);
    }
}
