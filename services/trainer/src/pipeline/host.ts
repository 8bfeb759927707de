import os from 'node:os';

/**
 * Where a training run ran, as MLflow run tags: the machine's (or container's) hostname, the image
 * it was started from when the image says so (CONVEYOR_HOST_IMAGE), and its CPUs and memory. A run
 * made by a remote worker is told apart from one made on the scheduling machine by these alone.
 */
export function hostTags(image: string | undefined): Record<string, string> {
  return {
    'conveyor.host': os.hostname(),
    ...(image ? { 'conveyor.host.image': image } : {}),
    'conveyor.host.platform': `${process.platform}-${process.arch}`,
    'conveyor.host.cpus': String(os.availableParallelism()),
    'conveyor.host.memory_mb': String(Math.round(os.totalmem() / 2 ** 20)),
  };
}
