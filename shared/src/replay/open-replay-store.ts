import { FolderReplayStore, type ReplayStore, type ReplayStoreLocation, type S3Options } from './replay-store.js';

/**
 * The store at `location`. The S3 client (@aws-sdk/client-s3: ~0.7 s and ~22 MB to load here) is
 * imported only for a store in S3, so a worker that records nothing, or records to a folder, never
 * loads it.
 */
export async function openReplayStore(location: ReplayStoreLocation, s3: S3Options = {}): Promise<ReplayStore> {
  if (location.kind === 'folder') return new FolderReplayStore(location.dir);
  const { S3ReplayStore } = await import('./s3-replay-store.js');
  return new S3ReplayStore(location, s3);
}
