"""Object formats: chunk/tree ids, the blob codec, packs, trees and job records."""
